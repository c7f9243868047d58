package main

import (
	"bytes"
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
