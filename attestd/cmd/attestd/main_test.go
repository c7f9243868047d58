package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/palisade-cc/palisade/attestd"
)

func TestHelp(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"--help"}, &out, &errb); code != 0 {
		t.Fatalf("--help exit %d", code)
	}
	for _, want := range []string{"Examples:", "Exit codes:", "--manifest-without-log-proof", "-deadline", "3  a verified keyd denied"} {
		if !strings.Contains(errb.String(), want) {
			t.Errorf("--help lacks %q:\n%s", want, errb.String())
		}
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{{"--no-such-flag"}, {"extra"}} {
		var out, errb bytes.Buffer
		if code := run(args, &out, &errb); code != attestd.ExitUsage {
			t.Errorf("%q: exit %d, want %d", args, code, attestd.ExitUsage)
		}
	}
	// Missing pinned files are a configuration failure, named.
	var out, errb bytes.Buffer
	code := run([]string{"--manifest-key", "/nonexistent/key.pem", "--hints", "/nonexistent/h.json", "--run-dir", t.TempDir()}, &out, &errb)
	if code != attestd.ExitConfig || !strings.Contains(out.String(), "manifest key") {
		t.Errorf("missing key: exit %d, console %q", code, out.String())
	}
}
