package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func TestPubkey(t *testing.T) {
	p := filepath.Join(t.TempDir(), "wg.key")
	var a, b bytes.Buffer
	if err := run([]string{"pubkey", "--key", p}, &a); err != nil {
		t.Fatal(err)
	}
	if err := run([]string{"pubkey", "--key", p}, &b); err != nil {
		t.Fatal(err)
	}
	if _, err := wgtypes.ParseKey(strings.TrimSpace(a.String())); err != nil || a.String() != b.String() {
		t.Errorf("pubkey printed %q then %q (%v), want the same key twice", a.String(), b.String(), err)
	}
	if err := run([]string{"pubkey"}, &a); err == nil {
		t.Error("pubkey without --key succeeded")
	}
	if err := run([]string{"frobnicate"}, &a); err == nil {
		t.Error("unknown command succeeded")
	}
	var h bytes.Buffer
	if err := run([]string{"--help"}, &h); err != nil || !strings.Contains(h.String(), "example:") {
		t.Errorf("--help: %v %q", err, h.String())
	}
}

// TestRunRefuses: `meshd run` never makes up a key (keyd would never list
// it) and needs attestd's admission record; a bad config names the field.
func TestRunRefuses(t *testing.T) {
	dir := t.TempDir()
	var out bytes.Buffer
	err := run([]string{"run", "--key", filepath.Join(dir, "missing.key"), "--admission", filepath.Join(dir, "a.json")}, &out)
	if err == nil || !strings.Contains(err.Error(), "attestd writes it") {
		t.Errorf("missing key: %v", err)
	}
	key := filepath.Join(dir, "wg.key")
	if err := run([]string{"pubkey", "--key", key}, &out); err != nil {
		t.Fatal(err)
	}
	err = run([]string{"run", "--key", key, "--admission", filepath.Join(dir, "a.json")}, &out)
	if err == nil || !strings.Contains(err.Error(), "admission record") {
		t.Errorf("missing admission record: %v", err)
	}
	if err := run([]string{"run", "--key", key, "--mtu", "100"}, &out); err == nil || !strings.Contains(err.Error(), "config.mtu") {
		t.Errorf("mtu 100: %v", err)
	}
	cfg := filepath.Join(dir, "meshd.json")
	if err := os.WriteFile(cfg, []byte(`{"version":1,"interfce":"x"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := run([]string{"run", "--config", cfg}, &out); err == nil || !strings.Contains(err.Error(), "interfce") {
		t.Errorf("config typo: %v", err)
	}
	var h bytes.Buffer
	if err := run([]string{"--help"}, &h); err != nil || !strings.Contains(h.String(), "meshd run") {
		t.Errorf("--help lacks run: %q", h.String())
	}
}
