package attestd

import (
	"crypto/x509"
	"io"
	"testing"

	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/attest/tpm"
	"github.com/palisade-cc/palisade/internal/attest/tpm/tpmtest"
)

// rwOnly hides the simulator's Close: tpmtest closes it when the test ends.
type rwOnly struct{ io.ReadWriter }

// TestJoinTPM: a TPM node (the process's one simulator, EK from a test CA
// the node's roots and keyd pin) joins a keyd on SEV-SNP. The profile is
// picked by reading the PCRs the manifest's TPM references pin: a profile
// that differs in PCR 9 sorts first and is passed over.
func TestJoinTPM(t *testing.T) {
	sim := tpmtest.Start(t, tpmtest.Config{})
	ref := sim.Reference(tpmProfile)
	wrong := sim.Reference("a-tpm-other-cmdline")
	wrong.TPM.PCRs[9] = make([]byte, 32)
	w := newWorld(t, worldOpts{
		nodeRefs:         []attest.Reference{*ref, *wrong},
		tpmRoots:         []*x509.Certificate{sim.CA.Root},
		tpmIntermediates: []*x509.Certificate{sim.CA.Intermediate},
		verifiers:        map[attest.Platform]attest.Verifier{attest.PlatformTPM: tpm.NewVerifier(sim.CA.Roots(), sim.CA.Intermediates())},
	})
	m, err := tpmMachine(rwOnly{sim.RW}, tpm.Options{EventLogPath: sim.LogPath}, "test TPM simulator")
	must(t, err)
	t.Cleanup(func() { m.Close() })
	adm, err := w.run(m, nil)
	if err != nil {
		t.Fatalf("join: %v\nconsole:\n%s", err, w.console.String())
	}
	if adm.Profile != tpmProfile || adm.Platform != "tpm" {
		t.Errorf("admitted as %s on %s, want %s on tpm", adm.Profile, adm.Platform, tpmProfile)
	}
	if !w.consoleHas("attestd: evidence platform=tpm profile=" + tpmProfile) {
		t.Errorf("console:\n%s", w.console.String())
	}

	// A PCR extended after boot (outside the log) matches no profile:
	// attestd says so, naming pcr09, and still asks keyd, whose verifier
	// denies it (final: keyd had proved itself).
	must(t, sim.Extend(9, []byte("injected")))
	w2 := newWorld(t, worldOpts{nodeRefs: []attest.Reference{*ref},
		tpmRoots:         []*x509.Certificate{sim.CA.Root},
		tpmIntermediates: []*x509.Certificate{sim.CA.Intermediate},
		verifiers:        map[attest.Platform]attest.Verifier{attest.PlatformTPM: tpm.NewVerifier(sim.CA.Roots(), sim.CA.Intermediates())},
	})
	_, err = w2.run(m, nil)
	if ExitCode(err) != ExitDenied || !w2.consoleHas(tpmProfile+" (pcr09: have ") || !w2.consoleHas("attestd: denied by keyd") {
		t.Fatalf("after extending PCR 9: %v, want keyd's denial and a console naming pcr09:\n%s", err, w2.console.String())
	}
}
