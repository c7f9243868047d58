package build

import (
	"slices"
	"testing"

	"github.com/palisade-cc/palisade/initramfs/api"
)

// The control-plane image carries keyd and starts it first; the node
// image does not carry it at all.
func TestControlPlaneStages(t *testing.T) {
	for _, tc := range []struct {
		profile string
		keyd    bool
	}{{api.ProfileProduction, false}, {api.ProfileDebug, false}, {api.ProfileControlPlane, true}} {
		bins := map[string]string{"init": "./initramfs/cmd/init"}
		for n, p := range profileComponents(tc.profile) {
			bins[n] = p
		}
		if _, ok := bins["keyd"]; ok != tc.keyd {
			t.Errorf("%s: keyd built = %v, want %v", tc.profile, ok, tc.keyd)
		}
		o := Options{Profile: tc.profile, ManifestWithoutLogProof: true}
		st := presentStages(o, api.Default(tc.profile).Stages, bins)
		var names []string
		for _, s := range st {
			names = append(names, s.Name)
			if (s.Name == "keyd" || s.Name == "attestd" || s.Name == "attestd-serve") &&
				!slices.Contains(s.Args, "--manifest-without-log-proof") {
				t.Errorf("%s: stage %s args %v lack --manifest-without-log-proof", tc.profile, s.Name, s.Args)
			}
		}
		if got := len(names) > 0 && names[0] == "keyd"; got != tc.keyd {
			t.Errorf("%s: stages %v: keyd first = %v, want %v", tc.profile, names, got, tc.keyd)
		}
		if _, ok := Cmdlines[tc.profile]; !ok {
			t.Errorf("%s: no cmdline", tc.profile)
		}
	}
	if profileComponents(api.ProfileControlPlane)["attestd"] == "" {
		t.Error("control-plane lost the node components")
	}
	if _, ok := Components["keyd"]; ok {
		t.Error("Components (every image) carries keyd")
	}
}
