package modalias

import (
	"slices"
	"testing"
)

func TestParse(t *testing.T) {
	a, err := Parse([]byte(`# Aliases extracted from modules themselves.
alias pci:v000015B3d00001017sv*sd*bc*sc*i* mlx5_core
alias pci:v*d*sv*sd*bc01sc08i02* nvme
alias pci:v*d*sv*sd*bc01sc08i02* nvme
` + "alias pci:v00001077d00008070sv*sd*bc*sc*i* qede-x\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(a["mlx5_core"]) != 1 || len(a["qede_x"]) != 1 {
		t.Errorf("aliases %v: want mlx5_core and qede-x (as qede_x)", a)
	}
	if got := Match([]string{"qede-x", "igb"}, a, []string{"pci:v00001077d00008070sv00001077sd00000001bc02sc00i00"}); !slices.Equal(got, []string{"qede-x"}) {
		t.Errorf("match = %q, want [qede-x]", got)
	}
	for name, bad := range map[string]string{
		"not alias": "softdep e1000e pre: crc32\n",
		"two words": "alias pci:v*\n",
		"bad glob":  "alias pci:v[ e1000e\n",
	} {
		if _, err := Parse([]byte(bad)); err == nil {
			t.Errorf("%s: accepted %q", name, bad)
		}
	}
}

func TestMatch(t *testing.T) {
	a := map[string][]string{
		"e1000e": {"pci:v00008086d000010D3sv*sd*bc*sc*i*"},
		"nvme":   {"pci:v*d*sv*sd*bc01sc08i02*"},
		"igb":    {"pci:v00008086d00001533sv*sd*bc*sc*i*"},
	}
	devs := []string{"pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02", "pci:v00008086d000010D3sv00008086sd00000000bc02sc00i00"}
	if got := Match([]string{"igb", "nvme", "e1000e", "absent"}, a, devs); !slices.Equal(got, []string{"nvme", "e1000e"}) {
		t.Errorf("Match = %q, want [nvme e1000e] (config order, only present hardware)", got)
	}
	if got := Match([]string{"e1000e"}, a, []string{"pci:v00008086d000010D3"}); got != nil {
		t.Errorf("Match of a truncated modalias = %q, want none (patterns match whole strings)", got)
	}
}

// FuzzParse: any input either fails or yields patterns Match can use.
func FuzzParse(f *testing.F) {
	f.Add([]byte("alias pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e\n# c\n\nalias virtio:d00000001v* virtio_net\n"))
	f.Add([]byte("alias pci:v[ x\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := Parse(b)
		if err != nil {
			return
		}
		for m, ps := range a {
			if m == "" || len(ps) == 0 {
				t.Fatalf("module %q with %d patterns", m, len(ps))
			}
			_ = Match([]string{m}, a, ps)
		}
	})
}
