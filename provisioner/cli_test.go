package provisioner

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/palisade-cc/palisade/provisioner/config"
)

func runCLI(t *testing.T, env map[string]string, args ...string) (int, string) {
	t.Helper()
	var out bytes.Buffer
	c := &CLI{Stdout: &out, Stderr: &out, Getenv: func(k string) string { return env[k] }}
	return c.Run(context.Background(), args), out.String()
}

func TestCLIHelp(t *testing.T) {
	for name := range (&CLI{}).commands() {
		args := append(strings.Fields(name), "--help")
		rc, out := runCLI(t, nil, args...)
		if rc != 0 || !strings.Contains(out, "Example:\n  provisioner "+name) {
			t.Errorf("%s --help: exit %d\n%s", name, rc, out)
		}
	}
	if rc, out := runCLI(t, nil, "--help"); rc != 0 || !strings.Contains(out, "provisioner serve --config FILE") {
		t.Errorf("--help: %d %s", rc, out)
	}
	if rc, _ := runCLI(t, nil); rc != 2 {
		t.Errorf("no arguments: exit %d, want 2", rc)
	}
	if rc, out := runCLI(t, nil, "machines", "frob"); rc != 2 || !strings.Contains(out, `unknown command "machines frob"`) {
		t.Errorf("unknown command: %d %s", rc, out)
	}
	if rc, out := runCLI(t, nil, "machines", "show"); rc != 2 || !strings.Contains(out, "want 1 argument(s), got 0") {
		t.Errorf("missing argument: %d %s", rc, out)
	}
}

func TestCLIErrors(t *testing.T) {
	if rc, out := runCLI(t, nil, "machines", "list"); rc != 1 || !strings.Contains(out, "no token") {
		t.Errorf("no token: %d %s", rc, out)
	}
	tok := filepath.Join(t.TempDir(), "tok")
	os.WriteFile(tok, []byte("0123456789abcdef0123"), 0o644)
	if rc, out := runCLI(t, nil, "machines", "list", "--token-file", tok); rc != 1 || !strings.Contains(out, "others may access it") {
		t.Errorf("world-readable token: %d %s", rc, out)
	}
	if rc, out := runCLI(t, nil, "serve"); rc != 1 || !strings.Contains(out, "--config FILE is required") {
		t.Errorf("serve without config: %d %s", rc, out)
	}
}

func TestConfigInit(t *testing.T) {
	rc, out := runCLI(t, nil, "config", "init")
	if rc != 0 || out != config.Template {
		t.Errorf("config init to stdout: %d", rc)
	}
	p := filepath.Join(t.TempDir(), "p.json")
	if rc, out := runCLI(t, nil, "config", "init", "--out", p); rc != 0 {
		t.Fatalf("config init --out: %d %s", rc, out)
	}
	if _, err := config.Load(p); err != nil {
		t.Errorf("written config does not load: %v", err)
	}
	if rc, out := runCLI(t, nil, "config", "init", "--out", p); rc != 1 || !strings.Contains(out, "exists") {
		t.Errorf("config init overwrote: %d %s", rc, out)
	}
	// serve loads and validates the file before anything starts.
	var got config.Config
	c := &CLI{Stdout: &bytes.Buffer{}, Stderr: &bytes.Buffer{}, Getenv: func(string) string { return "" },
		Serve: func(_ context.Context, cfg config.Config) error { got = cfg; return nil }}
	if rc := c.Run(context.Background(), []string{"serve", "--config", p}); rc != 0 || got.Version != 1 {
		t.Errorf("serve --config: %d %+v", rc, got)
	}
}
