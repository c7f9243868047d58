package cli

import (
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// lostAnswer delivers the request to keyd and loses keyd's answer, as a
// connection reset after the request was written does.
type lostAnswer struct{ rt http.RoundTripper }

func (l lostAnswer) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := l.rt.RoundTrip(r)
	if err == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	return nil, errors.New("read: connection reset by peer")
}

// refused answers 409 without reaching keyd.
type refused struct{}

func (refused) RoundTrip(r *http.Request) (*http.Response, error) {
	return &http.Response{StatusCode: http.StatusConflict, Status: "409 Conflict", Request: r,
		Body: io.NopCloser(strings.NewReader(`{"error":"already initialised"}`)), Header: http.Header{}}, nil
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// TestInitKeepsSecretWhenAnswerLost: keyd took the master secret but its
// answer was lost; init must keep the owner's secret and key (deleting them
// would leave a cluster nobody can recover) and say so, and the kept secret
// is the one keyd holds (recover with it is accepted).
func TestInitKeepsSecretWhenAnswerLost(t *testing.T) {
	w := newWorld(t)
	addr := w.startKeyd("keyd-0")
	w.writeConfig(addr)
	code, _, errs := w.run(Env{Transport: func(rt http.RoundTripper) http.RoundTripper { return lostAnswer{rt} }}, "init", addr)
	if code != ExitUnreachable || !strings.Contains(errs, "KEPT") {
		t.Fatalf("init with a lost answer: exit %d, %s", code, errs)
	}
	for _, f := range []string{"owner-secret.json", "owner.key"} {
		if !exists(filepath.Join(w.dir, f)) {
			t.Errorf("%s deleted although keyd may hold the secret", f)
		}
	}
	if code, out, errs := w.run(Env{}, "recover", addr); code != ExitOK {
		t.Errorf("recover with the kept secret: exit %d\n%s%s", code, out, errs)
	}
}

// TestInitRemovesSecretWhenRefused: keyd answered with a refusal, so it
// holds nothing of this secret; the files go, and a new init can run.
func TestInitRemovesSecretWhenRefused(t *testing.T) {
	w := newWorld(t)
	addr := w.startKeyd("keyd-0")
	w.writeConfig(addr)
	code, _, errs := w.run(Env{Transport: func(http.RoundTripper) http.RoundTripper { return refused{} }}, "init", addr)
	if code == ExitOK || strings.Contains(errs, "KEPT") {
		t.Fatalf("refused init: exit %d, %s", code, errs)
	}
	for _, f := range []string{"owner-secret.json", "owner.key"} {
		if exists(filepath.Join(w.dir, f)) {
			t.Errorf("%s kept although keyd refused", f)
		}
	}
	if code, out, errs := w.run(Env{}, "init", addr); code != ExitOK {
		t.Errorf("init after a refusal: exit %d\n%s%s", code, out, errs)
	}
}

// TestConfigInitFlagsAfterInit: the example's form, flags after "init",
// takes the flags; --help after init is help, not a usage error.
func TestConfigInitFlagsAfterInit(t *testing.T) {
	dir := t.TempDir()
	var out, errb strings.Builder
	if code := Run(t.Context(), []string{"config", "init", "--cluster", "prod-eu1", "--keyd", "10.0.0.5:7443"},
		Env{Stdout: &out, Stderr: &errb, ConfigDir: dir}); code != ExitOK {
		t.Fatalf("config init with flags after init: exit %d, %s", code, errb.String())
	}
	b, err := os.ReadFile(filepath.Join(dir, "verifier.json"))
	if err != nil || !strings.Contains(string(b), `"prod-eu1"`) || !strings.Contains(string(b), "10.0.0.5:7443") {
		t.Errorf("verifier.json lacks the flags' values: %v\n%s", err, b)
	}
	errb.Reset()
	if code := Run(t.Context(), []string{"config", "init", "--help"}, Env{Stdout: &out, Stderr: &errb, ConfigDir: t.TempDir()}); code != ExitOK || strings.Contains(errb.String(), "argument") {
		t.Errorf("config init --help: exit %d, %s", code, errb.String())
	}
}
