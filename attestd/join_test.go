package attestd

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/palisade-cc/palisade/internal/atls"
	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/manifest"
	"github.com/palisade-cc/palisade/keyd/api"
)

// TestJoinSNP: the happy path on SEV-SNP. The manifest comes over an
// unattested session and verifies; the profile is picked by the report's
// MEASUREMENT; keyd admits; the console shows the two lines the VM tests
// wait for; admission.json holds the record and no disk key; the WireGuard
// key meshd reads is the one keyd registered.
func TestJoinSNP(t *testing.T) {
	w := newWorld(t, worldOpts{})
	m, ca := w.snpNode()
	adm, err := w.run(m, []string{testDiskUUID})
	if err != nil {
		t.Fatalf("join: %v\nconsole:\n%s", err, w.console.String())
	}
	if n := ca.n.Load(); n != 1 {
		t.Errorf("node attested %d times, want once (the manifest fetch must send no evidence)", n)
	}
	if adm.NodeID != testNodeID || adm.Profile != nodeProfile || adm.Platform != "sev-snp" || adm.Keyd != w.addr || adm.MeshAddress == "" {
		t.Errorf("admission %+v", adm.Record)
	}
	for _, want := range []string{
		"attestd: evidence platform=sev-snp profile=" + nodeProfile + "\n",
		fmt.Sprintf("attestd: admitted node=%s profile=%s platform=sev-snp keyd=%s log_index=%d\n", testNodeID, nodeProfile, w.addr, adm.LogIndex),
	} {
		if !w.consoleHas(want) {
			t.Errorf("console lacks %q:\n%s", want, w.console.String())
		}
	}
	if len(adm.DiskKeys) != 1 || adm.DiskKeys[0].UUID != testDiskUUID || len(adm.DiskKeys[0].Key) != 64 {
		t.Fatalf("disk keys %+v, want one 64-byte key for %s", adm.DiskKeys, testDiskUUID)
	}
	key := bytes.Clone(adm.DiskKeys[0].Key)

	path := filepath.Join(w.cfg.RunDir, "admission.json")
	st, err := os.Stat(path)
	must(t, err)
	if st.Mode().Perm() != 0o600 {
		t.Errorf("admission.json mode %v, want 0600", st.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	must(t, err)
	var rec Record
	must(t, json.Unmarshal(b, &rec))
	if d := cmp.Diff(adm.Record, rec); d != "" {
		t.Errorf("admission.json differs from the admission (-want +got):\n%s", d)
	}
	if rec.Cluster != testCluster || rec.Claims.NodeID != testNodeID || rec.Claims.Profile != nodeProfile ||
		!slices.Equal(rec.Claims.DiskUUIDs, []string{testDiskUUID}) || len(rec.Claims.WireGuardKey) != 32 {
		t.Errorf("admission.json cluster %q claims %+v, want the join's", rec.Cluster, rec.Claims)
	}
	if !strings.Contains(rec.Checkpoint, "keyd.test/"+testCluster) {
		t.Errorf("checkpoint %q is not keyd's signed note", rec.Checkpoint)
	}
	for _, enc := range []string{string(key), hex.EncodeToString(key), base64.StdEncoding.EncodeToString(key), base64.RawStdEncoding.EncodeToString(key)[:40]} {
		if bytes.Contains(b, []byte(enc)) || strings.Contains(w.console.String(), enc) {
			t.Fatal("a disk key reached admission.json or the console")
		}
	}
	recovery := adm.DiskKeys[0].Recovery
	if len(recovery) != api.RecoveryKeySize {
		t.Errorf("recovery key of %d bytes, want %d", len(recovery), api.RecoveryKeySize)
	}
	adm.Wipe()
	if adm.DiskKeys != nil || !bytes.Equal(recovery, make([]byte, len(recovery))) {
		t.Error("Wipe left the keys")
	}

	kb, err := os.ReadFile(filepath.Join(w.cfg.RunDir, "wg.key"))
	must(t, err)
	wk, err := wgtypes.ParseKey(strings.TrimSpace(string(kb)))
	must(t, err)
	nodes, err := w.ownerClient(w.chain).Nodes(context.Background())
	must(t, err)
	pub := wk.PublicKey()
	if len(nodes.Nodes) != 1 || !bytes.Equal(nodes.Nodes[0].WireGuardKey, pub[:]) || nodes.Nodes[0].Profile != nodeProfile {
		t.Errorf("registry %+v, want node %s with the key in wg.key", nodes.Nodes, testNodeID)
	}
}

// TestWipe zeroes the keys in place, so copies the caller handed on are
// cleared too: keyd's disk key and the owner's recovery key alike.
func TestWipe(t *testing.T) {
	k := bytes.Repeat([]byte{0xaa}, 64)
	r := bytes.Repeat([]byte{0xbb}, 32)
	a := &Admission{DiskKeys: []api.DiskKey{{UUID: testDiskUUID, Key: k, Recovery: r}}}
	a.Wipe()
	if !bytes.Equal(k, make([]byte, 64)) || !bytes.Equal(r, make([]byte, 32)) || a.DiskKeys != nil {
		t.Fatalf("after Wipe: key %x, recovery %x, keys %v", k, r, a.DiskKeys)
	}
}

// TestJoinUnpinnedKeyd: keyd's hardware chains to a root the node does
// not pin. The node refuses keyd, never produces evidence, and gives up at
// the deadline; keyd admitted nobody.
func TestJoinUnpinnedKeyd(t *testing.T) {
	_, other := chains(t)
	w := newWorld(t, worldOpts{keydChain: other})
	w.cfg.Deadline = 2 * time.Second                                                // room for one full attempt on a loaded machine
	w.cfg.BackoffMin, w.cfg.BackoffMax = 300*time.Millisecond, 300*time.Millisecond // few rounds: keyd rate-limits a hot loop
	m, ca := w.snpNode()
	_, err := w.run(m, nil)
	if !errors.Is(err, ErrDeadline) || ExitCode(err) != ExitDeadline {
		t.Fatalf("err %v, want ErrDeadline", err)
	}
	if c := attest.ClassOf(err); c != attest.ClassChain {
		t.Errorf("class %q, want %q: %v", c, attest.ClassChain, err)
	}
	if !strings.Contains(err.Error(), "no keyd admitted") {
		t.Errorf("err %v does not say keyd failed its chain of trust", err)
	}
	if n := ca.n.Load(); n != 0 {
		t.Fatalf("node produced evidence %d times for a keyd it could not verify", n)
	}
	nodes, err := w.ownerClient(other).Nodes(context.Background())
	must(t, err)
	if len(nodes.Nodes) != 0 {
		t.Errorf("keyd registered %+v", nodes.Nodes)
	}
}

// TestJoinManifestOtherKey: keyd serves a manifest signed by a key the node
// does not pin; the node trusts nothing in it and never attests.
func TestJoinManifestOtherKey(t *testing.T) {
	other := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{2}, ed25519.SeedSize))
	w := newWorld(t, worldOpts{servedKey: other})
	w.cfg.Deadline = 2 * time.Second                                                // room for one full attempt on a loaded machine
	w.cfg.BackoffMin, w.cfg.BackoffMax = 300*time.Millisecond, 300*time.Millisecond // few rounds: keyd rate-limits a hot loop
	m, ca := w.snpNode()
	_, err := w.run(m, nil)
	if !errors.Is(err, ErrDeadline) || !errors.Is(err, manifest.ErrSignature) {
		t.Fatalf("err %v, want ErrDeadline after %v", err, manifest.ErrSignature)
	}
	if n := ca.n.Load(); n != 0 {
		t.Fatalf("node attested %d times after an unverified manifest", n)
	}
	if w.consoleHas("attestd: evidence") {
		t.Errorf("console announced evidence:\n%s", w.console.String())
	}
}

// TestJoinManifestNeedsLogProof: without --manifest-without-log-proof a
// manifest with no transparency-log proof is refused.
func TestJoinManifestNeedsLogProof(t *testing.T) {
	w := newWorld(t, worldOpts{})
	w.cfg.ManifestWithoutLogProof = false
	w.cfg.Deadline = 2 * time.Second                                                // room for one full attempt on a loaded machine
	w.cfg.BackoffMin, w.cfg.BackoffMax = 300*time.Millisecond, 300*time.Millisecond // few rounds: keyd rate-limits a hot loop
	m, ca := w.snpNode()
	_, err := w.run(m, nil)
	if !errors.Is(err, ErrDeadline) || !errors.Is(err, manifest.ErrNoLogProof) {
		t.Fatalf("err %v, want ErrDeadline after %v", err, manifest.ErrNoLogProof)
	}
	if ca.n.Load() != 0 {
		t.Fatal("node attested")
	}
}

// TestJoinNoProfile: no reference of the manifest has this machine's
// MEASUREMENT. attestd names each candidate's first differing value on the
// console and still asks keyd with the first candidate, so the verdict is
// keyd's: here keyd admits against the same manifest, denies, and that
// denial is final (exit class 3).
func TestJoinNoProfile(t *testing.T) {
	edit := func(m *manifest.Manifest) {
		m.References[0].SNP = cloneSNP(m.References[0].SNP)
		m.References[0].SNP.Measurement = bytes.Repeat([]byte{0x11}, 48)
	}
	w := newWorld(t, worldOpts{served: edit, admitting: edit})
	m, _ := w.snpNode()
	_, err := w.run(m, nil)
	if !errors.Is(err, ErrDenied) || ExitCode(err) != ExitDenied {
		t.Fatalf("err %v, want keyd's denial", err)
	}
	want := fmt.Sprintf("%s (measurement: have %s, want %s)", nodeProfile, strings.Repeat("4d", 48), strings.Repeat("11", 48))
	if !w.consoleHas(want) || !w.consoleHas("asking keyd with profile "+nodeProfile) {
		t.Errorf("console lacks %q:\n%s", want, w.console.String())
	}
}

// TestPickProfileNone: a manifest without any profile of the platform
// leaves nothing to ask keyd with: ErrNoProfile, exit class 4.
func TestPickProfileNone(t *testing.T) {
	w := newWorld(t, worldOpts{served: func(m *manifest.Manifest) {
		m.References = []attest.Reference{{Profile: "tpm-only", Platform: attest.PlatformTPM,
			TPM: &attest.TPMReference{PCRs: map[int]attest.HexBytes{4: make([]byte, 32)}}}}
	}})
	m, ca := w.snpNode()
	_, err := w.run(m, nil)
	if !errors.Is(err, ErrNoProfile) || ExitCode(err) != ExitNoProfile {
		t.Fatalf("err %v, want ErrNoProfile", err)
	}
	if ca.n.Load() != 0 {
		t.Fatal("node attested")
	}
}

// TestJoinDenied: the node's profile is in the manifest keyd serves, but
// keyd admits against one that pins another HOST_DATA (as a keyd that
// reloaded a newer manifest would). keyd, verified by the node, denies the
// node's evidence: that is final, exit class 3 and the console line, after
// a single attempt.
func TestJoinDenied(t *testing.T) {
	w := newWorld(t, worldOpts{admitting: func(m *manifest.Manifest) {
		m.References[0].SNP = cloneSNP(m.References[0].SNP)
		m.References[0].SNP.HostData = bytes.Repeat([]byte{0x22}, 32)
	}})
	m, ca := w.snpNode()
	_, err := w.run(m, nil)
	if !errors.Is(err, ErrDenied) || ExitCode(err) != ExitDenied {
		t.Fatalf("err %v, want ErrDenied", err)
	}
	if want := "attestd: denied by keyd " + w.addr + "\n"; !w.consoleHas(want) {
		t.Errorf("console lacks %q:\n%s", want, w.console.String())
	}
	if n := ca.n.Load(); n != 1 {
		t.Errorf("node attested %d times, want exactly one attempt", n)
	}
	if _, err := os.Stat(filepath.Join(w.cfg.RunDir, "admission.json")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("admission.json after a denial: %v", err)
	}
}

// TestJoinUnverifiedDenialNotFinal: the first hint serves the genuine
// signed manifest but, proving nothing about itself, denies the node's
// admission hello. That is not keyd's verdict: attestd moves on to the
// next hint and is admitted there.
func TestJoinUnverifiedDenialNotFinal(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	fake, err := atls.NewListener(ln, &atls.Config{ClusterID: testCluster, AllowUnattestedPeer: true,
		Claims: attest.Claims{NodeID: "impostor", Role: attest.RoleKeyd, Profile: keydProfile},
		AcceptPeer: func(c attest.Claims) error {
			if c.Profile != "manifest-fetch" {
				return errors.New("deny the admission")
			}
			return nil
		}}, atls.ListenerOptions{})
	must(t, err)
	var manPath atomic.Value
	srv := &http.Server{Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		b, _ := os.ReadFile(manPath.Load().(string))
		rw.Write(b)
	})}
	go srv.Serve(fake)
	t.Cleanup(func() { srv.Close() })
	w := newWorld(t, worldOpts{hintsBefore: []string{ln.Addr().String()}})
	manPath.Store(filepath.Join(w.dir, "manifest.bundle.json"))
	m, _ := w.snpNode()
	adm, err := w.run(m, nil)
	if err != nil {
		t.Fatalf("join: %v\n%s", err, w.console.String())
	}
	if adm.Keyd != w.addr {
		t.Errorf("admitted by %s, want %s", adm.Keyd, w.addr)
	}
	if !w.consoleHas("attestd: evidence platform=sev-snp") {
		t.Errorf("console:\n%s", w.console.String())
	}
}

func cloneSNP(r *attest.SNPReference) *attest.SNPReference { c := *r; return &c }
