package qemutests

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/palisade-cc/palisade/images/build"
	"github.com/palisade-cc/palisade/initramfs/api"
	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/attest/snp/snptest"
	"github.com/palisade-cc/palisade/internal/attest/tdx/tdxtest"
	"github.com/palisade-cc/palisade/internal/attest/tpm/tpmtest"
	"github.com/palisade-cc/palisade/internal/cvm/reference"
	"github.com/palisade-cc/palisade/internal/manifest"
	"github.com/palisade-cc/palisade/internal/roots"
	"github.com/palisade-cc/palisade/qemu-tests/vm"
	"github.com/palisade-cc/palisade/verifier/cli"
)

// demoImages are the demo's two images, built for this run: the node
// image (production profile) and the control-plane image (the same plus
// keyd, which runs first on the machine it boots). Both pin the run's TPM
// CA and SEV-SNP chain: the control-plane's keyd attests with its TPM and
// verifies TPM and SEV-SNP nodes; nodes judge that keyd under the TPM CA.
type demoImages struct {
	// node is the node image; its Refs are every node reference of the
	// signed manifest (both images'), KeydRef unused.
	node testImage
	// ControlPlane is the control-plane UKI; KeydRefs its TPM references,
	// which the manifest lists for the keyd role too.
	ControlPlane string
	KeydRefs     []attest.Reference
	// RootsDir holds roots.json and the files it names (the image's).
	RootsDir string
}

var (
	demoOnce sync.Once
	demoVal  *demoImages
	demoErr  error
)

func demoImage(t *testing.T) *demoImages {
	t.Helper()
	demoOnce.Do(func() { demoVal, demoErr = buildDemo(t) })
	if demoErr != nil {
		t.Fatalf("demo images: %v", demoErr)
	}
	return demoVal
}

func buildDemo(t *testing.T) (*demoImages, error) {
	out := filepath.Join(outDir(), "demo")
	if err := os.RemoveAll(filepath.Join(out, "roots")); err != nil {
		return nil, err
	}
	d := &demoImages{RootsDir: filepath.Join(out, "roots")}
	img := &d.node
	var err error
	if img.CA, err = tpmtest.NewCA("palisade-demo"); err != nil {
		return nil, err
	}
	if img.Chain, err = snptest.NewChain(snptest.ChainOptions{}); err != nil {
		return nil, err
	}
	if img.TDX, err = tdxtest.NewFixture(); err != nil {
		return nil, err
	}
	if err := img.Chain.WriteBundle(filepath.Join(d.RootsDir, "kds"), snptest.BundleOptions{}); err != nil {
		return nil, err
	}
	writePEMs(t, filepath.Join(d.RootsDir, "tpm-roots.pem"), img.CA.Root)
	writePEMs(t, filepath.Join(d.RootsDir, "tpm-intermediates.pem"), img.CA.Intermediate)
	rc := roots.Config{TPMRoots: "tpm-roots.pem", TPMIntermediates: "tpm-intermediates.pem",
		SNP:              map[string]roots.SNP{"Milan": {VCEKChain: "kds/kdsintf.amd.com/vcek/v1/Milan/cert_chain"}},
		SNPCollateralDir: "kds"}
	if err := writeJSON(filepath.Join(d.RootsDir, "roots.json"), rc); err != nil {
		return nil, err
	}
	key, pubPEM, pubPath, err := newManifestKey(out)
	if err != nil {
		return nil, err
	}
	img.PubPEM = pubPath
	fw := firmwareDir()
	if fw == "" {
		return nil, fmt.Errorf("the pinned AmdSev firmware is missing: run scripts/firmware.sh (make demo does)")
	}
	if img.Firmware, err = reference.LoadFirmware(fw); err != nil {
		return nil, fmt.Errorf("firmware %s: %w", fw, err)
	}
	o := build.Options{Version: "demo", Epoch: 1700000000, Root: "..", Out: filepath.Join(out, "image"),
		Cache: filepath.Join("..", "out", "image", "cache"), ManifestKey: pubPEM, Roots: d.RootsDir,
		ManifestWithoutLogProof: true, SNP: attest.SNPReference{Product: "Milan"}, Log: logWriter{t}}
	// The node image with SEV-SNP references (the second node is an
	// emulated SNP guest); the control-plane boots on a TPM only.
	o.Profile, o.Firmware = api.ProfileProduction, img.Firmware
	start := time.Now()
	nres, err := build.Build(context.Background(), o)
	if err != nil {
		return nil, err
	}
	o.Profile, o.Firmware = api.ProfileControlPlane, nil
	cres, err := build.Build(context.Background(), o)
	if err != nil {
		return nil, err
	}
	t.Logf("demo: built the node and control-plane images in %s", time.Since(start).Round(time.Second))
	img.Dir, img.UKI = nres.Dir, filepath.Join(nres.Dir, "palisade.efi")
	d.ControlPlane = filepath.Join(cres.Dir, "palisade.efi")
	img.Refs = append(append([]attest.Reference(nil), nres.References...), cres.References...)
	for _, r := range cres.References {
		if r.Platform == attest.PlatformTPM {
			d.KeydRefs = append(d.KeydRefs, r)
		}
	}
	files, err := manifest.FileDigests(os.DirFS(nres.Dir), []string{"palisade.efi", "vmlinuz", "initrd.img"})
	if err != nil {
		return nil, err
	}
	cfiles, err := manifest.FileDigests(os.DirFS(cres.Dir), []string{"palisade.efi", "initrd.img"})
	if err != nil {
		return nil, err
	}
	files["control-plane.efi"], files["control-plane-initrd.img"] = cfiles["palisade.efi"], cfiles["initrd.img"]
	m := &manifest.Manifest{Version: manifest.SchemaVersion, ImageVersion: "demo", SecurityVersion: 1,
		Files: files, References: img.Refs, Keyd: d.KeydRefs}
	b, err := manifest.Sign(m, key)
	if err != nil {
		return nil, err
	}
	img.Bundle = filepath.Join(out, "manifest.json")
	if err := writeJSON(img.Bundle, b); err != nil {
		return nil, err
	}
	return d, nil
}

// owner is the cluster owner's verifier configuration directory.
func (d *demoImages) ownerConfig(t *testing.T, keyd, logKey string) string {
	t.Helper()
	dir := t.TempDir()
	type roleRef struct {
		Role      attest.Role       `json:"role"`
		Reference *attest.Reference `json:"reference"`
	}
	var refs []roleRef
	for i := range d.node.Refs {
		refs = append(refs, roleRef{attest.RoleNode, &d.node.Refs[i]})
	}
	for i := range d.KeydRefs {
		refs = append(refs, roleRef{attest.RoleKeyd, &d.KeydRefs[i]})
	}
	if err := writeJSON(filepath.Join(dir, "references.json"), map[string]any{"format": 1, "security_version": 1, "references": refs}); err != nil {
		t.Fatal(err)
	}
	abs := func(p string) string { return filepath.Join(d.RootsDir, p) }
	cfg := map[string]any{"version": 1, "cluster_id": testCluster, "keyd": []string{keyd}, "references": "references.json",
		"log_key": logKey, "owner_key": "owner.key", "secret": "owner-secret.json", "attest_port": nodeAttestPort,
		"roots": roots.Config{TPMRoots: abs("tpm-roots.pem"), TPMIntermediates: abs("tpm-intermediates.pem"),
			SNP:              map[string]roots.SNP{"Milan": {VCEKChain: abs("kds/kdsintf.amd.com/vcek/v1/Milan/cert_chain")}},
			SNPCollateralDir: abs("kds")}}
	if err := writeJSON(filepath.Join(dir, "verifier.json"), cfg); err != nil {
		t.Fatal(err)
	}
	return dir
}

// verifier runs the owner's verifier inside the rack's namespace (the
// owner's laptop on the boot network: the guests are reachable only
// there) and returns its exit code, its output (the progress lines on
// stderr first) and its stdout alone (the report).
func (r *rack) verifier(t *testing.T, dir string, args ...string) (code int, out, stdout string) {
	t.Helper()
	cmd := r.net.Command(goBin(t, "verifier"), append([]string{args[0], "--config", dir}, args[1:]...)...)
	var sout, serr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &sout, &serr
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-ctx.Done():
		cmd.Process.Kill()
		<-done
		t.Fatalf("verifier %s: no answer in 3 minutes:\n%s%s", args[0], serr.String(), sout.String())
	}
	return cmd.ProcessState.ExitCode(), serr.String() + sout.String(), sout.String()
}

// TestDemo is `make demo`: the provisioner serves two images and the
// signed manifest; the first node (TPM, UEFI HTTP boot) boots the
// control-plane image, whose keyd the owner initialises with `verifier
// init`, and which joins its own keyd as a node; the second node (emulated
// SEV-SNP, blank disk) boots the node image, joins keyd on the first,
// formats and unlocks its disk; both mesh over WireGuard; `verifier
// cluster` then attests keyd and both nodes live, and exits 0.
func TestDemo(t *testing.T) {
	vm.Require(t)
	began := time.Now()
	step := func(format string, a ...any) {
		t.Logf("demo %6.1fs: %s", time.Since(began).Seconds(), fmt.Sprintf(format, a...))
	}
	step("building the node and control-plane images (about a minute: fresh test keys each run; kernel, packages and firmware are cached)")
	d := demoImage(t)
	img := &d.node
	r := &rack{t: t, img: img, net: vm.NewNetwork(t, "10.80.0.0/24"), keydLog: &syncBuffer{}}
	t.Cleanup(func() {
		if t.Failed() && r.provL != nil {
			t.Logf("provisioner log:\n%s", tail(r.provL.String(), 30))
		}
	})
	cpMAC, nodeMAC := "52:54:00:80:00:01", "52:54:00:80:00:02"
	cpIP := r.net.Addr(20).String()
	keydAddr := fmt.Sprintf("%s:%d", cpIP, api.KeydPort)
	r.keydAddr = keydAddr
	// The control-plane has a fixed address: it is where the nodes (and
	// the owner) find keyd. It finds its own keyd on loopback.
	r.reserve = map[string]string{cpMAC: cpIP}
	r.files = map[string]string{"manifest.json": img.Bundle}
	r.serve(acceptRule{mac: cpMAC, profile: "control-plane", image: d.ControlPlane, keyd: fmt.Sprintf("127.0.0.1:%d", api.KeydPort)},
		acceptRule{mac: nodeMAC, profile: "snp-node", image: img.UKI})
	step("provisioner serving on %s (DHCP, TFTP, HTTP boot, the signed manifest)", r.net.Gateway)
	if ui := os.Getenv("PALISADE_DEMO_UI"); ui != "" {
		addr := r.forward(t, ui, fmt.Sprintf("%s:8081", r.net.Gateway))
		step("provisioner web UI: http://%s/ (token %s) while the demo runs", addr, rackToken)
	}

	step("booting the first node (control-plane image, TPM, UEFI HTTP boot)")
	cp := vm.Start(t, vm.Config{Name: "demo-cp", TPM: vm.NewSWTPM(t, img.CA), Net: r.net, MAC: cpMAC,
		Extra: httpBoot, MemoryMB: 1536, Timeout: 15 * time.Minute})
	lk := cp.Expect(`msg="admission log" .*verifier_key=(\S+)`, bootTimeout)
	cp.Expect(`msg="keyd listening" .*unlocked=false`, time.Minute)
	step("keyd is up on the first node, locked until the owner's init")

	owner := d.ownerConfig(t, keydAddr, lk[1])
	if code, out, _ := r.verifier(t, owner, "init", keydAddr); code != cli.ExitOK {
		t.Fatalf("verifier init %s: exit %d:\n%s", keydAddr, code, out)
	} else {
		step("verifier init: %s", strings.TrimSpace(strings.SplitN(out, "\n", 2)[0]))
	}
	m := cp.Expect(`^attestd: admitted node=(\S+) profile=(\S+) platform=tpm`, 3*time.Minute)
	cpID := m[1]
	if m[2] != build.TPMProfile(api.ProfileControlPlane, false) {
		cp.Fail("first node admitted as %s, want the control-plane image's profile", m[2])
	}
	cp.Expect(`^meshd: running interface=palisade0 `, 90*time.Second)
	step("first node admitted by its own keyd as %s (%s), meshd running", cpID, m[2])

	step("booting the second node (node image, emulated SEV-SNP, blank disk)")
	disk := newDisk(t)
	node, _ := bootCVM(t, r, attest.PlatformSNP, cvmCase{name: "demo-snp", uki: img.UKI, mac: nodeMAC, vm: func(c *vm.Config) {
		c.Disks, c.MemoryMB, c.Timeout = []string{disk}, diskMemory, 12*time.Minute
	}})
	m = node.Expect(`^attestd: admitted node=(\S+) profile=(\S+) platform=sev-snp`, bootTimeout)
	nodeID := m[1]
	step("second node admitted as %s (%s)", nodeID, m[2])
	f := node.Expect(`^attestd: disk: formatted (\S+) uuid=(\S+)`, 2*time.Minute)
	node.Expect(`^attestd: disk: unlocked \S+ uuid=`+regexp.QuoteMeta(f[2])+` mounted /var`, 2*time.Minute)
	step("second node formatted and unlocked its disk %s (uuid %s)", f[1], f[2])
	node.Expect(`^meshd: running interface=palisade0 `, 90*time.Second)

	for _, c := range []struct {
		v     *vm.VM
		other string
	}{{cp, nodeID}, {node, cpID}} {
		c.v.Expect(`^meshd: peer `+regexp.QuoteMeta(c.other)+` handshake$`, 2*time.Minute)
		step("%s: WireGuard handshake with %s", c.v.Name, c.other)
	}

	// The owner's check of everything: keyd attested, its log consistent,
	// every admitted node attested live on its attestation port.
	code, table, _ := r.verifier(t, owner, "cluster", keydAddr)
	t.Logf("verifier cluster (exit %d):\n%s", code, table)
	if code != cli.ExitOK {
		t.Fatalf("verifier cluster: exit %d", code)
	}
	code, _, js := r.verifier(t, owner, "cluster", "--json", keydAddr)
	var rep cli.Report
	if err := json.Unmarshal([]byte(js), &rep); err != nil || code != cli.ExitOK {
		t.Fatalf("verifier cluster --json: exit %d, %v:\n%s", code, err, js)
	}
	got := map[string]cli.NodeReport{}
	for _, n := range rep.Nodes {
		got[n.NodeID] = n
	}
	for id, p := range map[string]attest.Platform{cpID: attest.PlatformTPM, nodeID: attest.PlatformSNP} {
		n, ok := got[id]
		if !ok || n.Status != cli.StatusOK || n.Platform != string(p) {
			t.Errorf("verifier cluster: node %s is %+v, want status %s on %s", id, n, cli.StatusOK, p)
		}
	}
	if !rep.KeydVerified || len(rep.Nodes) != 2 {
		t.Errorf("verifier cluster: keyd verified %v, %d nodes, want keyd verified and 2 nodes", rep.KeydVerified, len(rep.Nodes))
	}
	step("verifier cluster: keyd and both nodes attested live")

	for _, v := range []*vm.VM{cp, node} {
		if rec, err := v.WriteTimeline(t.Name()+"/"+v.Name, v.Name); err != nil {
			t.Errorf("timeline: %v", err)
		} else {
			t.Logf("boot timeline (%s):\n%s", v.Name, rec)
		}
	}
}

// forward listens on listen in the test's own network namespace (the
// host's loopback) and relays each connection to target inside the rack's
// namespace: the provisioner's web UI for a browser on the host. Only the
// dial runs on the namespace's thread; the relay is ordinary goroutines.
func (r *rack) forward(t *testing.T, listen, target string) string {
	t.Helper()
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		t.Fatalf("forward %s: %v", listen, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				var up net.Conn
				if err := r.net.Do(func() error {
					var err error
					up, err = net.DialTimeout("tcp", target, 5*time.Second)
					return err
				}); err != nil {
					return
				}
				defer up.Close()
				go func() { io.Copy(up, c); up.Close() }()
				io.Copy(c, up)
			}()
		}
	}()
	return ln.Addr().String()
}
