package atls_test

import (
	"bufio"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	spb "github.com/google/go-sev-guest/proto/sevsnp"

	"github.com/palisade-cc/palisade/internal/atls"
	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/attest/snp"
	"github.com/palisade-cc/palisade/internal/attest/snp/snptest"
	"github.com/palisade-cc/palisade/internal/attest/tdx"
	"github.com/palisade-cc/palisade/internal/attest/tdx/tdxtest"
)

// The two-process test: keyd runs in a child process on an emulated SEV-SNP
// machine, a node runs in this process on an emulated TDX machine, and they
// meet over loopback TCP. Neither process has the other's keys: each writes
// its public roots, collateral bundle and reference values into a shared
// directory — what a signed manifest and an offline bundle carry in
// production — and verifies the other from those alone.

const (
	childEnv     = "PALISADE_ATLS_CHILD_DIR"
	childLieEnv  = "PALISADE_ATLS_CHILD_LIE"
	clusterID    = "two-process-cluster"
	keydProfile  = "snp-keyd"
	nodeProfile  = "tdx-node"
	snpChainPath = "snp/kdsintf.amd.com/vcek/v1/Milan/cert_chain"
)

func TestMutualTwoProcessesRealPlatforms(t *testing.T) {
	for _, tc := range []struct {
		name              string
		keydLies, nodeLie bool
		wantNode, wantKey string // "ok", or the denial the side must report
	}{
		{"honest", false, false, "ok", "ok"},
		{"keyd-wrong-measurement", true, false, "denied measurement", "denied"},
		{"node-wrong-measurement", false, true, "peer-denied", "denied measurement"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			node, nodeRef := publishTDX(t, dir, tc.nodeLie)
			child, addr, results := startKeyd(t, dir, tc.keydLies)

			keydRef := readReference(t, filepath.Join(dir, "keyd-reference.json"))
			chain, err := os.ReadFile(filepath.Join(dir, snpChainPath))
			if err != nil {
				t.Fatal(err)
			}
			roots, err := snp.ParseRoots(chain, nil)
			if err != nil {
				t.Fatal(err)
			}
			cfg := &atls.Config{
				ClusterID: clusterID,
				Claims:    attest.Claims{NodeID: "node-1", Role: attest.RoleNode, Profile: nodeProfile},
				Attester:  node,
				Verifiers: map[attest.Platform]attest.Verifier{attest.PlatformSNP: &snp.Verifier{
					Roots:  map[string]*snp.Roots{"Milan": roots},
					Getter: &snp.Collateral{Dir: filepath.Join(dir, "snp")},
				}},
				Reference:  fixedReference(attest.RoleKeyd, keydRef),
				AcceptPeer: requireRole(attest.RoleKeyd),
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			conn, err := atls.Dial(ctx, "tcp", addr, cfg)
			got := "ok"
			switch {
			case errors.Is(err, atls.ErrPeerDenied):
				got = "peer-denied"
			case err != nil:
				got = "denied " + string(attest.ClassOf(err))
			default:
				v := conn.PeerVerified()
				t.Logf("node verified keyd %q: platform %s, measurement %s, chip %s…", conn.PeerClaims().NodeID,
					v.Platform, v.Measurements["measurement"][:16], v.HardwareID[:16])
				fmt.Fprintf(conn, "hello from %s\n", cfg.Claims.NodeID)
				reply, _ := bufio.NewReader(conn).ReadString('\n')
				if reply != "hello node-1, you are admitted\n" {
					t.Errorf("application data after the handshake: %q", reply)
				}
				conn.Close()
			}
			if got != tc.wantNode {
				t.Errorf("node side: %s (%v), want %s", got, err, tc.wantNode)
			}
			keydSaid := <-results
			if !strings.HasPrefix(keydSaid, tc.wantKey) {
				t.Errorf("keyd side: %q, want %q", keydSaid, tc.wantKey)
			}
			if err := child.Wait(); err != nil {
				t.Errorf("keyd process: %v", err)
			}
			_ = nodeRef
		})
	}
}

// TestKeydChildProcess is the child: it does nothing unless started by
// TestMutualTwoProcesses with childEnv set.
func TestKeydChildProcess(t *testing.T) {
	dir := os.Getenv(childEnv)
	if dir == "" {
		t.Skip("child process of TestMutualTwoProcessesRealPlatforms only")
	}
	if err := runKeyd(dir, os.Getenv(childLieEnv) == "1"); err != nil {
		fmt.Printf("RESULT error %v\n", err)
		os.Exit(3)
	}
}

func runKeyd(dir string, lie bool) error {
	chain, err := snptest.NewChain(snptest.ChainOptions{})
	if err != nil {
		return err
	}
	if err := chain.WriteBundle(filepath.Join(dir, "snp"), snptest.BundleOptions{}); err != nil {
		return err
	}
	ref := chain.Reference()
	ref.Profile = keydProfile
	if err := writeJSON(filepath.Join(dir, "keyd-reference.json"), ref); err != nil {
		return err
	}
	tr := &snptest.Transport{Chain: chain}
	if lie { // another image: the report's MEASUREMENT is not the published one
		tr.Report = func(rd [64]byte) *spb.Report {
			r := chain.Report(rd)
			r.Measurement[0] ^= 0xff
			return r
		}
	}
	der, err := os.ReadFile(filepath.Join(dir, "tdx-root.der"))
	if err != nil {
		return err
	}
	root, err := x509.ParseCertificate(der)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AddCert(root)
	nodeRef, err := readReferenceErr(filepath.Join(dir, "node-reference.json"))
	if err != nil {
		return err
	}
	cfg := &atls.Config{
		ClusterID: clusterID,
		Claims:    attest.Claims{NodeID: "keyd-0", Role: attest.RoleKeyd, Profile: keydProfile},
		Attester:  &snp.Attester{Transport: tr},
		Verifiers: map[attest.Platform]attest.Verifier{attest.PlatformTDX: &tdx.Verifier{
			Roots: pool, Getter: &tdx.Bundle{FS: os.DirFS(filepath.Join(dir, "tdx-bundle"))},
		}},
		Reference:  fixedReference(attest.RoleNode, nodeRef),
		AcceptPeer: requireRole(attest.RoleNode),
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer ln.Close()
	fmt.Printf("ADDR %s\n", ln.Addr())
	raw, err := ln.Accept()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := atls.Server(ctx, raw, cfg)
	if err != nil {
		fmt.Printf("RESULT denied %s (%v)\n", attest.ClassOf(err), err)
		return nil
	}
	defer conn.Close()
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "hello from node-1\n" {
		return fmt.Errorf("unexpected application data %q", line)
	}
	fmt.Fprintf(conn, "hello %s, you are admitted\n", conn.PeerClaims().NodeID)
	v := conn.PeerVerified()
	fmt.Printf("RESULT ok %s %s mrtd=%s\n", conn.PeerClaims().NodeID, v.Platform, v.Measurements["mrtd"][:16])
	return nil
}

// publishTDX makes this process's emulated TDX machine and publishes its
// root, collateral and reference; with lie, the machine then runs another
// image than the published reference says.
func publishTDX(t *testing.T, dir string, lie bool) (attest.Attester, *attest.Reference) {
	t.Helper()
	f, err := tdxtest.NewFixture()
	if err != nil {
		t.Fatal(err)
	}
	ref := f.Reference()
	ref.Profile = nodeProfile
	if err := writeJSON(filepath.Join(dir, "node-reference.json"), ref); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tdx-root.der"), f.PKI.Root.Raw, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "tdx-bundle"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := tdxtest.WriteDir(filepath.Join(dir, "tdx-bundle"), f.Bundle); err != nil {
		t.Fatal(err)
	}
	ccel := filepath.Join(dir, "ccel")
	if err := os.WriteFile(ccel, f.Log.Bytes(64), 0o644); err != nil {
		t.Fatal(err)
	}
	if lie {
		f.Body.MRTD[0] ^= 0xff
	}
	return &tdx.Attester{Transport: &tdxtest.Transport{F: f}, CCELPath: ccel}, ref
}

// startKeyd starts the child and returns its address and a channel with its
// RESULT line. The child is killed at the end of the test whatever happens.
func startKeyd(t *testing.T, dir string, lie bool) (*exec.Cmd, string, <-chan string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestKeydChildProcess$", "-test.v")
	cmd.Env = append(os.Environ(), childEnv+"="+dir)
	if lie {
		cmd.Env = append(cmd.Env, childLieEnv+"=1")
	}
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	lines := bufio.NewScanner(out)
	addr := ""
	for lines.Scan() {
		if a, ok := strings.CutPrefix(lines.Text(), "ADDR "); ok {
			addr = a
			break
		}
		if strings.HasPrefix(lines.Text(), "RESULT") {
			t.Fatalf("keyd process failed before listening: %s", lines.Text())
		}
	}
	if addr == "" {
		t.Fatal("keyd process exited without an address")
	}
	results := make(chan string, 1)
	go func() {
		for lines.Scan() {
			if r, ok := strings.CutPrefix(lines.Text(), "RESULT "); ok {
				results <- r
				_, _ = io.Copy(io.Discard, out)
				return
			}
		}
		results <- "no result"
	}()
	return cmd, addr, results
}

func fixedReference(role attest.Role, ref *attest.Reference) func(context.Context, attest.Claims) (*attest.Reference, error) {
	return func(_ context.Context, peer attest.Claims) (*attest.Reference, error) {
		if peer.Role != role || peer.Profile != ref.Profile {
			return nil, attest.Denyf(attest.ClassPolicy, "no reference for role %q profile %q", peer.Role, peer.Profile)
		}
		return ref, nil
	}
}

func requireRole(role attest.Role) func(attest.Claims) error {
	return func(peer attest.Claims) error {
		if peer.Role != role {
			return fmt.Errorf("peer role %q, want %q", peer.Role, role)
		}
		return nil
	}
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

func readReferenceErr(path string) (*attest.Reference, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r attest.Reference
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &r, r.Validate()
}

func readReference(t *testing.T, path string) *attest.Reference {
	t.Helper()
	r, err := readReferenceErr(path)
	if err != nil {
		t.Fatal(err)
	}
	return r
}
