package build

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckDeviceAliases(t *testing.T) {
	f := filepath.Join(t.TempDir(), "modules.alias")
	if err := os.WriteFile(f, []byte("# Aliases extracted from modules themselves.\n"+
		"alias pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e\nalias pci:v*d*sv*sd*bc01sc08i02* nvme\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := checkDeviceAliases(f, []string{"e1000e", "nvme"}); err != nil {
		t.Errorf("both have aliases: %v", err)
	}
	if err := checkDeviceAliases(f, []string{"e1000e", "mlx5_core"}); err == nil || !strings.Contains(err.Error(), "device module mlx5_core") {
		t.Errorf("mlx5_core has none: err = %v, want it named", err)
	}
	if err := checkDeviceAliases(filepath.Join(t.TempDir(), "none"), []string{"e1000e"}); err == nil {
		t.Error("a missing modules.alias passed")
	}
	if err := checkDeviceAliases(filepath.Join(t.TempDir(), "none"), nil); err != nil {
		t.Errorf("no device modules need no modules.alias: %v", err)
	}
}
