package firmware

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	if _, err := Load(dir, "sev-snp"); err == nil || !strings.Contains(err.Error(), "run scripts/firmware.sh") {
		t.Errorf("missing file: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "OVMF.amdsev.fd"), []byte("not the build"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(dir, "sev-snp"); err == nil || !strings.Contains(err.Error(), "the pinned build has") {
		t.Errorf("wrong digest: %v", err)
	}
	if _, err := Load(dir, "tpm"); err == nil || !strings.Contains(err.Error(), "no pinned build") {
		t.Errorf("unknown platform: %v", err)
	}
}

// TestLoadBuilt checks the files of this checkout's build when
// scripts/firmware.sh has run.
func TestLoadBuilt(t *testing.T) {
	dirs, _ := filepath.Glob("../../../out/firmware/*/SHA256SUMS")
	if len(dirs) == 0 {
		if os.Getenv("PALISADE_CROSSCHECK") == "1" {
			t.Fatal("PALISADE_CROSSCHECK=1 but there is no out/firmware build")
		}
		t.Skip("no out/firmware build: run scripts/firmware.sh")
	}
	for _, p := range Pinned {
		if _, err := Load(filepath.Dir(dirs[0]), p.Platform); err != nil {
			t.Error(err)
		}
	}
}
