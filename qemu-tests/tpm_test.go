package qemutests

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/qemu-tests/vm"
)

// tpmProfile is the reference of Debian's OVMF with Secure Boot off: the
// PCRs of the UKI (4), its initrd and cmdline (9) and its sections (11).
const tpmProfile = "tpm-uefi-sb-off-production"

// bootTimeout bounds one boot to the attestd verdict under TCG: firmware
// and a 14 MiB TFTP transfer take about 25 s, the kernel and init 10 s
// alone; with two VMs and the host sharing two cores a boot has taken
// close to 150 s, so the bound leaves room for a slower CI machine.
const bootTimeout = 4 * time.Minute

// httpBoot makes OVMF skip PXE so its UEFI HTTP boot option runs (OVMF's
// PxeBcPcdProducerLib reads these fw_cfg knobs).
var httpBoot = []string{
	"-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=n",
	"-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=n",
}

// TestTPM boots the measured UKI in QEMU with OVMF and swtpm, over TFTP and
// over UEFI HTTP boot from the provisioner, and checks that the guest's
// attestd is admitted by keyd, whose TPM verifier matched PCR4/9/11 exactly
// against the signed manifest and replayed the event log; then that a UKI
// with one byte changed in .cmdline boots and is denied.
func TestTPM(t *testing.T) {
	vm.Require(t)
	r := newRack(t, "10.77.0.0/24")
	img := r.img
	good := acceptRule{mac: "52:54:00:77:00:01", profile: "node", image: img.UKI}
	httpGood := acceptRule{mac: "52:54:00:77:00:02", profile: "node", image: img.UKI}
	bad := acceptRule{mac: "52:54:00:77:00:03", profile: "tampered", image: tamperCmdline(t, img.UKI)}
	r.serve(good, httpGood, bad)
	want := img.ref(t, tpmProfile)

	boot := func(t *testing.T, name string, rule acceptRule, extra []string) *vm.VM {
		return vm.Start(t, vm.Config{Name: name, TPM: vm.NewSWTPM(t, img.CA), Net: r.net, MAC: rule.mac, Extra: extra})
	}
	admitted := func(t *testing.T, v *vm.VM, via string) {
		m := v.Expect(`^attestd: admitted node=(\S+) profile=(\S+) platform=(\S+)`, bootTimeout)
		if m[2] != tpmProfile || m[3] != string(attest.PlatformTPM) {
			v.Fail("admitted as %s on %s, want %s on tpm", m[2], m[3], tpmProfile)
		}
		var got *attest.Verified
		for _, vr := range r.Verified() {
			if vr.Platform == attest.PlatformTPM && vr.Profile == tpmProfile {
				got = &vr
			}
		}
		if got == nil {
			v.Fail("keyd admitted the node but recorded no TPM verification")
		}
		// What keyd's verifier proved from the quote and event log is
		// exactly what images/build predicted from the artifacts.
		for pcr, val := range want.TPM.PCRs {
			name := fmt.Sprintf("PCR%d", pcr)
			if !strings.EqualFold(got.Measurements[name], val.String()) {
				v.Fail("%s: quoted %s, manifest %s", name, got.Measurements[name], val)
			}
		}
		if rec, err := v.WriteTimeline(t.Name(), via); err != nil {
			t.Errorf("timeline: %v", err)
		} else {
			t.Logf("boot timeline (%s):\n%s", via, rec)
		}
	}

	// Two VMs at a time (vm.MaxVMs): the three boots share the rack.
	t.Run("tftp", func(t *testing.T) {
		t.Parallel()
		v := boot(t, "tpm-tftp", good, nil)
		v.Expect(`NBP file downloaded successfully`, 90*time.Second)
		admitted(t, v, "tftp")
		// attestd's (untrusted, informational) report reached the
		// provisioner's timeline of this machine.
		r.waitStatus(t, good.mac, "attested")
	})
	t.Run("http", func(t *testing.T) {
		t.Parallel()
		v := boot(t, "tpm-http", httpGood, httpBoot)
		v.Expect(`URI: http://`+r.net.Gateway.String()+`:8080/node.efi`, 90*time.Second)
		admitted(t, v, "http")
	})
	t.Run("tampered-cmdline", func(t *testing.T) {
		t.Parallel()
		v := boot(t, "tpm-tampered", bad, nil)
		v.Expect(`Command line: console=ttyS0 panic=-2 rdinit=/init`, bootTimeout)
		v.Expect(`^attestd: denied by keyd`, bootTimeout)
		// The event log replays (the firmware measured what it logged);
		// the values differ from the manifest's: PCR 4 (the UKI's
		// Authenticode hash) is the first reference PCR checked.
		if !regexp.MustCompile(`class=measurement .*PCR (4|9|11) is [0-9a-f]+, reference \\"` + tpmProfile).MatchString(r.keydLog.String()) {
			t.Errorf("keyd's log has no measurement denial:\n%s", tail(r.keydLog.String(), 20))
		}
	})
}
