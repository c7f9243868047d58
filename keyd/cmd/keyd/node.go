package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	iapi "github.com/palisade-cc/palisade/initramfs/api"
	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/attest/tpm"
	"github.com/palisade-cc/palisade/internal/manifest"
	"github.com/palisade-cc/palisade/internal/roots"
	"github.com/palisade-cc/palisade/keyd"
)

// "keyd node" is keyd as the first stage of the control-plane image
// (initramfs/api.ProfileControlPlane; docs/keyd.md, "keyd on the first
// node"). Nothing is configured by hand inside a measured image, so it
// derives keyd's configuration at boot:
//
//   - what it trusts comes from the image (measured): the manifest key
//     and the roots the image's attestd pins;
//   - what it is told comes from the untrusted hints the init wrote: the
//     cluster ID, and the provisioner's boot HTTP server, from which it
//     fetches the signed manifest. The manifest cannot be in the image (it
//     carries the image's own measurements) and needs no trusted channel:
//     keyd verifies it against the compiled-in key, as attestd does;
//   - its profile is the manifest's keyd reference whose PCRs this
//     machine's TPM holds (a wrong pick would only make every peer deny
//     keyd, but the right one is known, so it is taken);
//   - its state is under /run (tmpfs): a rebooted control-plane node has
//     an empty keyd that waits for `verifier recover`.

// Defaults of the control-plane image.
const (
	defaultHints       = "/run/palisade/hints.json"
	defaultManifestKey = "/etc/palisade/manifest.pub"
	defaultRoots       = "/etc/palisade/roots/roots.json"
	defaultStateDir    = "/run/palisade/keyd"
	defaultManifest    = "manifest.json"
	// maxManifest bounds the fetched bundle (a manifest of every profile
	// is tens of kilobytes).
	maxManifest = 4 << 20
	// maxSmall bounds the hints and roots files.
	maxSmall = 1 << 20
)

// node derives keyd's configuration on the first node and runs keyd.
type node struct {
	HintsPath, ManifestKeyPath, RootsPath, StateDir string
	// ManifestName is the file fetched from the hints' status URL.
	ManifestName string
	// ManifestLogKey is the Rekor log's PEM key; empty requires
	// WithoutLogProof (test clusters only).
	ManifestLogKey  string
	WithoutLogProof bool
	Listen          string
	TPMPath         string
	EventLogPath    string
	// FetchTimeout bounds the manifest fetch (retried until then).
	FetchTimeout time.Duration

	// Dependencies; nil means production.
	HTTP     *http.Client
	ReadPCRs func(path string, pcrs []int) (map[int][]byte, error)
	NodeID   func() string
	Run      func(context.Context, *keyd.Config, *slog.Logger) error
	Log      *slog.Logger
}

func (n *node) defaults() {
	def := func(p *string, v string) {
		if *p == "" {
			*p = v
		}
	}
	def(&n.HintsPath, defaultHints)
	def(&n.ManifestKeyPath, defaultManifestKey)
	def(&n.RootsPath, defaultRoots)
	def(&n.StateDir, defaultStateDir)
	def(&n.ManifestName, defaultManifest)
	def(&n.Listen, ":"+strconv.Itoa(iapi.KeydPort))
	def(&n.TPMPath, "/dev/tpmrm0")
	def(&n.EventLogPath, tpm.DefaultEventLogPath)
	if n.FetchTimeout == 0 {
		n.FetchTimeout = 2 * time.Minute
	}
	if n.HTTP == nil {
		// No proxy, no redirects: the provisioner serves the file itself.
		n.HTTP = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{Proxy: nil},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	if n.ReadPCRs == nil {
		n.ReadPCRs = readPCRs
	}
	if n.NodeID == nil {
		n.NodeID = machineID
	}
	if n.Run == nil {
		n.Run = keyd.Run
	}
	if n.Log == nil {
		n.Log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
}

// nodeMain is "keyd node [flags]".
func nodeMain(ctx context.Context, args []string) int {
	n := &node{}
	fs := flag.NewFlagSet("keyd node", flag.ContinueOnError)
	fs.StringVar(&n.HintsPath, "hints", envOr("PALISADE_HINTS", defaultHints), "untrusted hints the init wrote (cluster, status URL)")
	fs.StringVar(&n.ManifestKeyPath, "manifest-key", envOr("PALISADE_MANIFEST_KEY", defaultManifestKey), "pinned PEM key that signs manifests (in the image)")
	fs.StringVar(&n.RootsPath, "roots", defaultRoots, "pinned roots (internal/roots JSON, in the image)")
	fs.StringVar(&n.StateDir, "state-dir", defaultStateDir, "keyd's state, log key and fetched manifest (tmpfs)")
	fs.StringVar(&n.ManifestName, "manifest-name", defaultManifest, "file fetched from the hints' status URL")
	fs.StringVar(&n.ManifestLogKey, "manifest-log-key", os.Getenv("PALISADE_REKOR_KEY"), "Rekor log's PEM public key (the image's, from the init)")
	fs.BoolVar(&n.WithoutLogProof, "manifest-without-log-proof", false, "accept a manifest without a Rekor proof (test clusters)")
	fs.StringVar(&n.Listen, "listen", ":"+strconv.Itoa(iapi.KeydPort), "aTLS listen address")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	n.defaults()
	cfg, err := n.config(ctx)
	if err != nil {
		n.Log.Error("keyd node: config", "err", err)
		return 2
	}
	n.Log.Info("keyd node", "cluster", cfg.ClusterID, "node", cfg.NodeID, "profile", cfg.Profile, "listen", cfg.Listen,
		"state", n.StateDir, "note", "state is on tmpfs: after a reboot keyd waits for 'verifier recover'")
	if err := n.Run(ctx, cfg, n.Log); err != nil {
		n.Log.Error("keyd", "err", err)
		return 1
	}
	return 0
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// config derives keyd's configuration; each error names its source.
func (n *node) config(ctx context.Context) (*keyd.Config, error) {
	hb, err := readSmall(n.HintsPath)
	if err != nil {
		return nil, fmt.Errorf("hints: %w", err)
	}
	h, err := parseNodeHints(hb)
	if err != nil {
		return nil, fmt.Errorf("hints %s: %w", n.HintsPath, err)
	}
	rb, err := readSmall(n.RootsPath)
	if err != nil {
		return nil, fmt.Errorf("roots: %w", err)
	}
	rc, err := parseRoots(rb, filepath.Dir(n.RootsPath))
	if err != nil {
		return nil, fmt.Errorf("roots %s: %w", n.RootsPath, err)
	}
	keys, err := keyd.LoadManifestKeys([]string{n.ManifestKeyPath})
	if err != nil {
		return nil, fmt.Errorf("manifest key: %w", err)
	}
	if n.ManifestLogKey == "" && !n.WithoutLogProof {
		return nil, errors.New("manifest log key: none given (--manifest-log-key; --manifest-without-log-proof on test clusters only)")
	}
	if err := os.MkdirAll(n.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	mb, err := n.fetchManifest(ctx, h.Status)
	if err != nil {
		return nil, err
	}
	// Verified here to pick the profile; keyd.Run verifies the file again
	// (with the log proof when a log key is given).
	res, err := manifest.Verify(mb, manifest.Options{Keys: keys, AllowNoLogProof: true})
	if err != nil {
		return nil, fmt.Errorf("manifest from %s: %w", h.Status, err)
	}
	ref, err := n.pickProfile(res.Manifest)
	if err != nil {
		return nil, err
	}
	mp := filepath.Join(n.StateDir, "manifest.json")
	if err := os.WriteFile(mp, mb, 0o600); err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	cfg := &keyd.Config{Version: keyd.ConfigVersion, ClusterID: h.Cluster, NodeID: n.NodeID(), Profile: ref.Profile,
		Listen: n.Listen, StatePath: filepath.Join(n.StateDir, "state.db"),
		ManifestPath: mp, ManifestKeys: []string{n.ManifestKeyPath}, ManifestLogKey: n.ManifestLogKey,
		ManifestWithoutLogProof: n.WithoutLogProof && n.ManifestLogKey == "",
		LogKeyFile:              filepath.Join(n.StateDir, "log.key"),
		Attester:                keyd.AttesterConfig{Platform: attest.PlatformTPM, TPMPath: n.TPMPath, EventLogPath: n.EventLogPath},
		Roots:                   *rc}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}

func readSmall(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxSmall+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxSmall {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, maxSmall)
	}
	return b, nil
}

// parseNodeHints reads the init's hints file: keyd needs the cluster and
// the provisioner's status URL (where the manifest is served); both are
// checked as the init checked them.
func parseNodeHints(b []byte) (*iapi.Hints, error) {
	var h iapi.Hints
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&h); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, errors.New("trailing data")
	}
	if h.Cluster == "" {
		return nil, errors.New("cluster: none (the provisioner profile's cluster)")
	}
	if _, err := iapi.ParseCmdline("palisade.cluster=" + h.Cluster); err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	if h.Status == "" {
		return nil, errors.New("status: none, so no server to fetch the signed manifest from")
	}
	if err := iapi.CheckStatusURL(h.Status); err != nil {
		return nil, err
	}
	return &h, nil
}

// parseRoots reads the image's roots strictly and makes its paths
// absolute under dir (keyd resolves them against its working directory).
func parseRoots(b []byte, dir string) (*roots.Config, error) {
	var c roots.Config
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, errors.New("trailing data")
	}
	abs := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	abs(&c.TPMRoots)
	abs(&c.TPMIntermediates)
	abs(&c.SNPCollateralDir)
	abs(&c.TDXRoot)
	abs(&c.TDXCollateralDir)
	for k, s := range c.SNP {
		abs(&s.VCEKChain)
		c.SNP[k] = s
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if c.TPMRoots == "" {
		return nil, errors.New("tpm_roots: empty, so keyd could not verify this node's own TPM evidence")
	}
	return &c, nil
}

// fetchManifest GETs status/ManifestName, retrying until FetchTimeout: the
// provisioner served this image a moment ago, but its HTTP server may be
// briefly unreachable while the network settles.
func (n *node) fetchManifest(ctx context.Context, status string) ([]byte, error) {
	u := strings.TrimSuffix(status, "/") + "/" + n.ManifestName
	ctx, cancel := context.WithTimeout(ctx, n.FetchTimeout)
	defer cancel()
	for delay := time.Second; ; delay = min(2*delay, 15*time.Second) {
		b, err := n.get(ctx, u)
		if err == nil {
			return b, nil
		}
		n.Log.Warn("keyd node: manifest fetch failed, retrying", "url", u, "err", err, "in", delay)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("manifest %s: %w", u, err)
		case <-time.After(delay):
		}
	}
}

func (n *node) get(ctx context.Context, u string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := n.HTTP.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("HTTP %s", resp.Status)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxManifest+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxManifest {
		return nil, fmt.Errorf("larger than %d bytes", maxManifest)
	}
	return b, nil
}

// pickProfile returns the manifest's TPM keyd reference whose PCRs this
// machine's TPM holds.
func (n *node) pickProfile(m *manifest.Manifest) (*attest.Reference, error) {
	var cands []*attest.Reference
	var pcrs []int
	for i := range m.Keyd {
		r := &m.Keyd[i]
		if r.Platform == attest.PlatformTPM && r.TPM != nil && len(r.TPM.PCRs) > 0 {
			cands = append(cands, r)
			for p := range r.TPM.PCRs {
				pcrs = append(pcrs, p)
			}
		}
	}
	if len(cands) == 0 {
		return nil, fmt.Errorf("manifest (image %s): no tpm keyd reference", m.ImageVersion)
	}
	slices.Sort(pcrs)
	have, err := n.ReadPCRs(n.TPMPath, slices.Compact(pcrs))
	if err != nil {
		return nil, fmt.Errorf("tpm %s: %w", n.TPMPath, err)
	}
	var why []string
cand:
	for _, r := range cands {
		for _, p := range slices.Sorted(maps.Keys(r.TPM.PCRs)) {
			if !bytes.Equal(have[p], r.TPM.PCRs[p]) {
				why = append(why, fmt.Sprintf("%s: pcr%d is %x, want %x", r.Profile, p, have[p], []byte(r.TPM.PCRs[p])))
				continue cand
			}
		}
		return r, nil
	}
	return nil, fmt.Errorf("manifest (image %s): no tpm keyd reference matches this TPM (%s)", m.ImageVersion, strings.Join(why, "; "))
}

// readPCRs reads SHA-256 PCRs (TPM2_PCR_Read returns at most 8 per call,
// TPM 2.0 Part 3 §22.4, so it loops, at most len(pcrs) times).
func readPCRs(path string, pcrs []int) (map[int][]byte, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	t := transport.FromReadWriter(f)
	out := map[int][]byte{}
	for range len(pcrs) {
		sel := make([]byte, 3)
		left := 0
		for _, p := range pcrs {
			if out[p] == nil && p >= 0 && p < 24 {
				sel[p/8] |= 1 << (p % 8)
				left++
			}
		}
		if left == 0 {
			break
		}
		r, err := tpm2.PCRRead{PCRSelectionIn: tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{
			{Hash: tpm2.TPMAlgSHA256, PCRSelect: sel}}}}.Execute(t)
		if err != nil {
			return nil, fmt.Errorf("PCR_Read: %w", err)
		}
		if len(r.PCRSelectionOut.PCRSelections) != 1 || len(r.PCRValues.Digests) == 0 {
			return nil, errors.New("PCR_Read: no SHA-256 values returned")
		}
		got, d := r.PCRSelectionOut.PCRSelections[0].PCRSelect, 0
		for p := 0; p < len(got)*8 && d < len(r.PCRValues.Digests); p++ {
			if got[p/8]&(1<<(p%8)) != 0 {
				out[p] = r.PCRValues.Digests[d].Buffer
				d++
			}
		}
	}
	return out, nil
}

// machineID names this keyd after the machine: the SMBIOS system UUID, as
// attestd names nodes, else the first MAC address.
func machineID() string {
	if b, err := os.ReadFile("/sys/class/dmi/id/product_uuid"); err == nil {
		if s := strings.ToLower(strings.TrimSpace(string(b))); s != "" {
			return "keyd-" + s
		}
	}
	ifs, _ := net.Interfaces()
	for _, i := range ifs {
		if len(i.HardwareAddr) == 6 && i.Flags&net.FlagLoopback == 0 {
			return "keyd-" + hex.EncodeToString(i.HardwareAddr)
		}
	}
	return "keyd-0"
}
