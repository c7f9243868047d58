package cvm

import (
	"bytes"
	"context"
	"crypto/sha512"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/attest/cvmport"
	"github.com/palisade-cc/palisade/internal/attest/snp"
	"github.com/palisade-cc/palisade/internal/attest/snp/snptest"
	"github.com/palisade-cc/palisade/internal/attest/tdx"
	"github.com/palisade-cc/palisade/internal/attest/tdx/tdxtest"
	"github.com/palisade-cc/palisade/internal/cvm/reference"
)

func binding(nonce byte) attest.Binding {
	return attest.Binding{Role: attest.RoleNode, ClusterID: "c1",
		Exporter: bytes.Repeat([]byte{7}, attest.ExporterSize), Nonce: bytes.Repeat([]byte{nonce}, attest.NonceSize),
		ClaimsDigest: sha512.Sum512_256([]byte("claims"))}
}

// snpEnv is a test chain, its offline KDS bundle and a verifier pinned to
// its roots.
type snpEnv struct {
	chain *snptest.Chain
	v     *snp.Verifier
}

func newSNPEnv(t *testing.T) *snpEnv {
	t.Helper()
	c, err := snptest.NewChain(snptest.ChainOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := c.WriteBundle(dir, snptest.BundleOptions{}); err != nil {
		t.Fatal(err)
	}
	return &snpEnv{chain: c, v: &snp.Verifier{Roots: c.Roots(), Getter: &snp.Collateral{Dir: dir}}}
}

func snpLaunch(fw, uki string) Launch {
	return Launch{Platform: attest.PlatformSNP, Firmware: fw, UKI: uki, VCPUs: 1, VCPUType: "EPYC-v4"}
}

func tdxLaunch(fw, uki string) Launch {
	return Launch{Platform: attest.PlatformTDX, Firmware: fw, UKI: uki, VCPUs: 1, VCPUType: "EPYC-v4"}
}

func tdxVerifier(fx *tdxtest.Fixture) *tdx.Verifier {
	return &tdx.Verifier{Roots: fx.PKI.Pool(), Getter: &tdx.Bundle{FS: fx.Bundle}, Now: func() time.Time { return tdxtest.Epoch }}
}

// snpEvidence is what attestd does on an emulated SNP node: snp.Attester
// with the port as its transport.
func snpEvidence(t *testing.T, c *cvmport.Client, b attest.Binding) (*attest.Evidence, error) {
	t.Helper()
	return (&snp.Attester{Transport: c}).Attest(context.Background(), nil, b)
}

// tdxEvidence is what attestd does on an emulated TD: the CC event log from
// the port written where tdx.Attester reads it, the port as its transport.
func tdxEvidence(t *testing.T, c *cvmport.Client, b attest.Binding) (*attest.Evidence, error) {
	t.Helper()
	l, err := c.CCEL(context.Background())
	if err != nil {
		return nil, err
	}
	p := filepath.Join(t.TempDir(), "CCEL")
	if err := os.WriteFile(p, l, 0o644); err != nil {
		t.Fatal(err)
	}
	return (&tdx.Attester{Transport: c, CCELPath: p}).Attest(context.Background(), nil, b)
}

func verify(v attest.Verifier, ev *attest.Evidence, b attest.Binding, ref attest.Reference) (*attest.Verified, error) {
	return v.Verify(context.Background(), ev, attest.Input{Binding: b, Reference: &ref})
}

func TestSNPEvidenceVerifies(t *testing.T) {
	env := newSNPEnv(t)
	for _, a := range testArtifacts(t) {
		t.Run(a.name, func(t *testing.T) {
			e, err := NewSNP(snpLaunch(a.snpFW, a.uki), env.chain)
			if err != nil {
				t.Fatal(err)
			}
			if _, _, _, err := e.DirectBootFiles(t.TempDir()); err != nil {
				t.Fatal(err)
			}
			c := connect(t, e)
			if c.Platform() != attest.PlatformSNP {
				t.Fatalf("platform %q", c.Platform())
			}
			b := binding(1)
			ev, err := snpEvidence(t, c, b)
			if err != nil {
				t.Fatal(err)
			}
			got, err := verify(env.v, ev, b, e.Reference())
			if err != nil {
				t.Fatalf("emulated SNP evidence denied: %v", err)
			}
			if got.Profile != e.Reference().Profile {
				t.Errorf("verified profile %q", got.Profile)
			}
			// Binding: the report data is the guest's, so another
			// session's binding is denied.
			if _, err := verify(env.v, ev, binding(2), e.Reference()); attest.ClassOf(err) != attest.ClassBinding {
				t.Errorf("other binding: %v, want a binding denial", err)
			}
		})
	}
}

func TestTDXEvidenceVerifies(t *testing.T) {
	fx, err := tdxtest.Shared()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range testArtifacts(t) {
		t.Run(a.name, func(t *testing.T) {
			e, err := NewTDX(tdxLaunch(a.tdxFW, a.uki), fx)
			if err != nil {
				t.Fatal(err)
			}
			c := connect(t, e)
			b := binding(1)
			ev, err := tdxEvidence(t, c, b)
			if err != nil {
				t.Fatal(err)
			}
			if len(ev.Blobs[tdx.BlobCCEL]) != ccelArea {
				t.Errorf("CCEL blob %d bytes, want the %d-byte area", len(ev.Blobs[tdx.BlobCCEL]), ccelArea)
			}
			if _, err := verify(tdxVerifier(fx), ev, b, e.Reference()); err != nil {
				t.Fatalf("emulated TDX evidence denied: %v", err)
			}
			// The CC event log replays, by the verifier's own parser,
			// to the RTMRs images/build predicts.
			r, err := tdx.Replay(ev.Blobs[tdx.BlobCCEL])
			if err != nil {
				t.Fatal(err)
			}
			ref := e.Reference()
			for i := range r {
				if !bytes.Equal(r[i][:], ref.TDX.RTMR[i]) {
					t.Errorf("RTMR%d replays to %x, reference %x", i, r[i], []byte(ref.TDX.RTMR[i]))
				}
			}
			if _, err := verify(tdxVerifier(fx), ev, binding(2), e.Reference()); attest.ClassOf(err) != attest.ClassBinding {
				t.Errorf("other binding: %v, want a binding denial", err)
			}
		})
	}
}

// TestReferenceMatchesBuild: the emulator's reference is what images/build
// writes for the same firmware, UKI and shape.
func TestReferenceMatchesBuild(t *testing.T) {
	env := newSNPEnv(t)
	fx, err := tdxtest.Shared()
	if err != nil {
		t.Fatal(err)
	}
	shape := reference.Shapes[0]
	for _, a := range testArtifacts(t) {
		t.Run(a.name, func(t *testing.T) {
			uki, err := os.ReadFile(a.uki)
			if err != nil {
				t.Fatal(err)
			}
			read := func(p string) []byte {
				b, err := os.ReadFile(p)
				if err != nil {
					t.Fatal(err)
				}
				return b
			}
			l := snpLaunch(a.snpFW, a.uki)
			l.VCPUs, l.VCPUType = shape.VCPUs, shape.VCPUType
			s, err := NewSNP(l, env.chain)
			if err != nil {
				t.Fatal(err)
			}
			policy := *s.Reference().SNP
			policy.Measurement = nil
			refs, _, err := reference.CVMReferences(uki, reference.CVMOptions{Image: "production",
				Firmware: reference.Firmware{SNP: read(a.snpFW)}, Shapes: []reference.Shape{shape}, SNP: policy})
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff([]attest.Reference{s.Reference()}, refs); diff != "" {
				t.Errorf("SNP reference (-emulator +images/build):\n%s", diff)
			}

			l = tdxLaunch(a.tdxFW, a.uki)
			l.VCPUs, l.VCPUType = shape.VCPUs, shape.VCPUType
			x, err := NewTDX(l, fx)
			if err != nil {
				t.Fatal(err)
			}
			refs, missing, err := reference.CVMReferences(uki, reference.CVMOptions{Image: "production",
				Firmware: reference.Firmware{TDX: read(a.tdxFW)}, Shapes: []reference.Shape{shape},
				TDXBoots: []reference.TDXBoot{x.TDXBoot()}})
			if err != nil || len(missing) != 0 {
				t.Fatalf("CVMReferences: %v, missing %v", err, missing)
			}
			if diff := cmp.Diff([]attest.Reference{x.Reference()}, refs); diff != "" {
				t.Errorf("TDX reference (-emulator +images/build):\n%s", diff)
			}
		})
	}
}

// TestRefusesChangedFiles: after launch, one changed byte in any launched
// file (the UKI's initrd, the direct-boot kernel or initrd, the firmware)
// makes the emulator refuse to sign.
func TestRefusesChangedFiles(t *testing.T) {
	env := newSNPEnv(t)
	fx, err := tdxtest.Shared()
	if err != nil {
		t.Fatal(err)
	}
	a := testArtifacts(t)[0]
	copyFile := func(src string) string {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(t.TempDir(), filepath.Base(src))
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	flipByte := func(t *testing.T, p string) {
		t.Helper()
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		b[len(b)/2] ^= 0x80
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name, want string
		change     func(t *testing.T, fw, uki, kernel, initrd string)
	}{
		{"uki initrd", "uki palisade.efi", func(t *testing.T, _, uki, _, _ string) { flipInitrd(t, uki) }},
		{"firmware", "firmware", func(t *testing.T, fw, _, _, _ string) { flipByte(t, fw) }},
		{"direct-boot kernel", "kernel vmlinuz", func(t *testing.T, _, _, k, _ string) { flipByte(t, k) }},
		{"direct-boot initrd", "initrd initrd.img", func(t *testing.T, _, _, _, i string) { flipByte(t, i) }},
		{"uki removed", "no such file", func(t *testing.T, _, uki, _, _ string) { os.Remove(uki) }},
	} {
		t.Run("sev-snp/"+tc.name, func(t *testing.T) {
			fw, uki := copyFile(a.snpFW), copyFile(a.uki)
			e, err := NewSNP(snpLaunch(fw, uki), env.chain)
			if err != nil {
				t.Fatal(err)
			}
			k, i, _, err := e.DirectBootFiles(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			c := connect(t, e)
			if _, err := snpEvidence(t, c, binding(1)); err != nil {
				t.Fatalf("before the change: %v", err)
			}
			tc.change(t, fw, uki, k, i)
			_, err = snpEvidence(t, c, binding(1))
			if err == nil || !strings.Contains(err.Error(), "emulator refused") || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("after the change: %v, want a refusal naming %q", err, tc.want)
			}
		})
		if strings.HasPrefix(tc.name, "direct-boot") {
			continue // TDX boots the UKI itself
		}
		t.Run("tdx/"+tc.name, func(t *testing.T) {
			fw, uki := copyFile(a.tdxFW), copyFile(a.uki)
			e, err := NewTDX(tdxLaunch(fw, uki), fx)
			if err != nil {
				t.Fatal(err)
			}
			c := connect(t, e)
			if _, err := tdxEvidence(t, c, binding(1)); err != nil {
				t.Fatalf("before the change: %v", err)
			}
			tc.change(t, fw, uki, "", "")
			if _, err := c.Quote(context.Background(), [64]byte{}); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("quote after the change: %v, want a refusal naming %q", err, tc.want)
			}
			if _, err := c.CCEL(context.Background()); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("ccel after the change: %v, want a refusal naming %q", err, tc.want)
			}
		})
	}
}

// TestOtherInitrdDenied: a guest launched with another initrd verifies
// against its own reference and is denied (measurement class) against the
// original's.
func TestOtherInitrdDenied(t *testing.T) {
	env := newSNPEnv(t)
	fx, err := tdxtest.Shared()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range testArtifacts(t) {
		t.Run(a.name, func(t *testing.T) { otherInitrdDenied(t, env, fx, a) })
	}
}

func otherInitrdDenied(t *testing.T, env *snpEnv, fx *tdxtest.Fixture, a artifacts) {
	b := binding(3)

	orig, err := NewSNP(snpLaunch(a.snpFW, a.uki), env.chain)
	if err != nil {
		t.Fatal(err)
	}
	other, err := NewSNP(snpLaunch(a.snpFW, a.otherInitrd), env.chain)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := snpEvidence(t, connect(t, other), b)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := verify(env.v, ev, b, other.Reference()); err != nil {
		t.Errorf("SNP: other initrd against its own reference: %v", err)
	}
	if _, err := verify(env.v, ev, b, orig.Reference()); attest.ClassOf(err) != attest.ClassMeasurement {
		t.Errorf("SNP: other initrd against the original's reference: %v, want a measurement denial", err)
	}

	origT, err := NewTDX(tdxLaunch(a.tdxFW, a.uki), fx)
	if err != nil {
		t.Fatal(err)
	}
	otherT, err := NewTDX(tdxLaunch(a.tdxFW, a.otherInitrd), fx)
	if err != nil {
		t.Fatal(err)
	}
	ev, err = tdxEvidence(t, connect(t, otherT), b)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := verify(tdxVerifier(fx), ev, b, otherT.Reference()); err != nil {
		t.Errorf("TDX: other initrd against its own reference: %v", err)
	}
	if _, err := verify(tdxVerifier(fx), ev, b, origT.Reference()); attest.ClassOf(err) != attest.ClassMeasurement {
		t.Errorf("TDX: other initrd against the original's reference: %v, want a measurement denial", err)
	}
	if bytes.Equal(origT.Reference().TDX.RTMR[1], otherT.Reference().TDX.RTMR[1]) {
		t.Error("TDX: RTMR1 does not depend on the initrd")
	}
}

// TestShapeAndSettings: the shape, Secure Boot state and image profile each
// change the reference (its values or its name).
func TestShapeAndSettings(t *testing.T) {
	env := newSNPEnv(t)
	fx, err := tdxtest.Shared()
	if err != nil {
		t.Fatal(err)
	}
	a := testArtifacts(t)[0]
	base := snpLaunch(a.snpFW, a.uki)
	four := base
	four.VCPUs = 4
	s1, err := NewSNP(base, env.chain)
	if err != nil {
		t.Fatal(err)
	}
	s4, err := NewSNP(four, env.chain)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(s1.Reference().SNP.Measurement, s4.Reference().SNP.Measurement) {
		t.Error("SNP measurement does not depend on the vCPU count")
	}
	if !strings.Contains(s4.Reference().Profile, "-4cpu-epyc-v4-production") {
		t.Errorf("profile %q", s4.Reference().Profile)
	}
	tb := tdxLaunch(a.tdxFW, a.uki)
	t4, sb := tb, tb
	t4.VCPUs = 4
	sb.SecureBoot = true
	var rtmr0, rtmr1 [][]byte
	for _, l := range []Launch{tb, t4, sb} {
		e, err := NewTDX(l, fx)
		if err != nil {
			t.Fatal(err)
		}
		rtmr0 = append(rtmr0, e.Reference().TDX.RTMR[0])
		rtmr1 = append(rtmr1, e.Reference().TDX.RTMR[1])
	}
	if bytes.Equal(rtmr0[0], rtmr0[1]) || bytes.Equal(rtmr0[0], rtmr0[2]) {
		t.Error("TDX RTMR0 does not depend on the shape or the Secure Boot state")
	}
	if !bytes.Equal(rtmr1[0], rtmr1[1]) || bytes.Equal(rtmr1[0], rtmr1[2]) {
		t.Error("TDX RTMR1 should depend on Secure Boot (inner kernel event) and not on the vCPUs")
	}
}

func TestLaunchValidate(t *testing.T) {
	env := newSNPEnv(t)
	fx, err := tdxtest.Shared()
	if err != nil {
		t.Fatal(err)
	}
	a := testArtifacts(t)[0]
	for _, tc := range []struct {
		name   string
		change func(*Launch)
		want   string
	}{
		{"platform", func(l *Launch) { l.Platform = attest.PlatformTPM }, "launch.platform"},
		{"firmware", func(l *Launch) { l.Firmware = "" }, "launch.firmware: empty"},
		{"missing firmware", func(l *Launch) { l.Firmware = filepath.Join(t.TempDir(), "x.fd") }, "launch.firmware"},
		{"uki", func(l *Launch) { l.UKI = "" }, "launch.uki: empty"},
		{"not a uki", func(l *Launch) { l.UKI = a.snpFW }, "launch.uki"},
		{"vcpus", func(l *Launch) { l.VCPUs = 0 }, "launch.vcpus"},
		{"vcpu type", func(l *Launch) { l.VCPUType = "" }, "launch.vcpu_type"},
		{"unknown vcpu type", func(l *Launch) { l.VCPUType = "Pentium" }, "Pentium"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := snpLaunch(a.snpFW, a.uki)
			tc.change(&l)
			if _, err := NewSNP(l, env.chain); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("NewSNP: %v, want %q", err, tc.want)
			}
			if tc.name == "unknown vcpu type" {
				return // TDX measures no CPUID signature
			}
			l = tdxLaunch(a.tdxFW, a.uki)
			tc.change(&l)
			if tc.name == "platform" || tc.name == "not a uki" || strings.HasSuffix(tc.name, "firmware") || tc.name == "uki" || tc.name == "vcpus" || tc.name == "vcpu type" {
				if _, err := NewTDX(l, fx); err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Errorf("NewTDX: %v, want %q", err, tc.want)
				}
			}
		})
	}
	if _, err := NewSNP(snpLaunch(a.snpFW, a.uki), nil); err == nil {
		t.Error("NewSNP without a chain succeeded")
	}
	if _, err := NewTDX(tdxLaunch(a.tdxFW, a.uki), nil); err == nil {
		t.Error("NewTDX without a fixture succeeded")
	}
}

// TestWrongPlatformRequests: each emulator answers only its platform's
// requests, and DirectBootFiles is SNP's.
func TestWrongPlatformRequests(t *testing.T) {
	env := newSNPEnv(t)
	fx, err := tdxtest.Shared()
	if err != nil {
		t.Fatal(err)
	}
	a := testArtifacts(t)[0]
	s, err := NewSNP(snpLaunch(a.snpFW, a.uki), env.chain)
	if err != nil {
		t.Fatal(err)
	}
	x, err := NewTDX(tdxLaunch(a.tdxFW, a.uki), fx)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := s.Quote(ctx, [64]byte{}); err == nil {
		t.Error("SNP emulator quoted")
	}
	if _, err := s.CCEL(ctx); err == nil {
		t.Error("SNP emulator returned a CCEL")
	}
	if _, _, err := x.GetExtendedReport(ctx, [64]byte{}); err == nil {
		t.Error("TDX emulator returned an SNP report")
	}
	if _, _, _, err := x.DirectBootFiles(t.TempDir()); err == nil {
		t.Error("TDX emulator wrote direct-boot files")
	}
	if !cmp.Equal(s.TDXBoot(), reference.TDXBoot{}) {
		t.Error("SNP emulator has a TDX boot record")
	}
}

func TestDirectBootFiles(t *testing.T) {
	env := newSNPEnv(t)
	a := testArtifacts(t)[0]
	e, err := NewSNP(snpLaunch(a.snpFW, a.uki), env.chain)
	if err != nil {
		t.Fatal(err)
	}
	k, i, cmdline, err := e.DirectBootFiles(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	uki, _ := os.ReadFile(a.uki)
	want, err := reference.DirectBoot(uki)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := os.ReadFile(k)
	ib, _ := os.ReadFile(i)
	if !bytes.Equal(kb, want.Kernel) || !bytes.Equal(ib, want.Initrd) || cmdline != want.Cmdline {
		t.Error("direct-boot files differ from reference.DirectBoot")
	}
}

func TestQEMUArgs(t *testing.T) {
	e := &Emulator{}
	got := strings.Join(e.QEMUArgs("/tmp/a,b/cvm.sock"), " ")
	for _, want := range []string{"socket,id=palisadecvm,reconnect=1,path=/tmp/a,,b/cvm.sock", "virtio-serial-pci,id=palisadecvmbus",
		"virtserialport,bus=palisadecvmbus.0,chardev=palisadecvm,name=" + cvmport.PortName} {
		if !strings.Contains(got, want) {
			t.Errorf("QEMUArgs %q lacks %q", got, want)
		}
	}
}

// TestServeLifecycle: Serve needs Listen, serves a reconnecting QEMU, and
// stops on ctx without leaving the socket.
func TestServeLifecycle(t *testing.T) {
	env := newSNPEnv(t)
	a := testArtifacts(t)[0]
	e, err := NewSNP(snpLaunch(a.snpFW, a.uki), env.chain)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Serve(context.Background()); err == nil {
		t.Error("Serve before Listen succeeded")
	}
	c := connect(t, e)
	if _, _, err := c.GetExtendedReport(context.Background(), [64]byte{}); err != nil {
		t.Fatal(err)
	}
	c.Close()
	// QEMU reconnects after the stream ended: the next connection is served.
	sock := e.ln.Addr().String()
	if err := e.Listen(filepath.Join(t.TempDir(), "again.sock")); err == nil {
		t.Error("second Listen succeeded")
	}
	conn, err := netDial(sock)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := cvmport.NewClient(context.Background(), conn)
	if err != nil {
		t.Fatalf("reconnect: %v", err)
	}
	c2.Close()
}

func TestMalformedFromGuest(t *testing.T) {
	env := newSNPEnv(t)
	a := testArtifacts(t)[0]
	e, err := NewSNP(snpLaunch(a.snpFW, a.uki), env.chain)
	if err != nil {
		t.Fatal(err)
	}
	var logged func() string
	e.log, logged = newTextLogger()
	c := connect(t, e)
	conn, err := netDial(e.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c.Close() // the emulator serves one connection at a time
	if _, err := conn.Write([]byte("not a frame at all, PCVM\xff\xff\xff\xff")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Read(buf); err == nil {
		t.Error("the emulator answered an oversized frame instead of dropping the stream")
	}
	if !strings.Contains(logged(), "malformed") {
		t.Errorf("log %q has no malformed-input line", logged())
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Error("the emulator kept the broken stream open")
	}
}
