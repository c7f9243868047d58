package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/palisade-cc/palisade/images/build"
)

func TestFirmwareProfile(t *testing.T) {
	dir := t.TempDir()
	meas := map[string]string{}
	for _, n := range []string{"0", "1", "2", "3", "4", "5", "6", "7", "9", "11"} {
		meas["PCR"+n] = strings.Repeat(n[:1]+"a", 32)
	}
	write := func(name string, v any) string {
		b, _ := json.Marshal(v)
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tpm := write("tpm.json", map[string]any{"address": "10.0.0.7:7444", "verified": map[string]any{"platform": "tpm", "measurements": meas}})
	var out bytes.Buffer
	if err := cmdFirmwareProfile([]string{"--name", "rack-a", tpm}, &out); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "fw.json")
	if err := os.WriteFile(p, out.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	fws, err := build.LoadTPMFirmware(p)
	if err != nil || len(fws) != 1 || len(fws[0].PCRs) != 7 || fws[0].PCRs[4] != nil {
		t.Fatalf("profile %+v, %v: want PCR 0-3, 5-7 and no PCR4", fws, err)
	}
	snp := write("snp.json", map[string]any{"verified": map[string]any{"platform": "sev-snp", "measurements": meas}})
	if err := cmdFirmwareProfile([]string{"--name", "rack-a", snp}, &out); err == nil || !strings.Contains(err.Error(), "not a verified TPM node") {
		t.Errorf("SEV-SNP node's evidence: %v", err)
	}
	if err := cmdFirmwareProfile([]string{"--name", "rack-a", "--pcrs", "0,4,7", tpm}, &out); err == nil {
		t.Error("PCR4 pinned from a boot")
	}
}
