package attestd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	iapi "github.com/palisade-cc/palisade/initramfs/api"
	"github.com/palisade-cc/palisade/internal/atls"
	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/manifest"
	"github.com/palisade-cc/palisade/keyd/api"
)

// Defaults of `attestd serve`.
const (
	// DefaultSocket is the peer-set proxy's unix socket meshd follows.
	DefaultSocket = "/run/palisade/keyd.sock"
	// DefaultAttestPort is the node's aTLS attestation endpoint, the
	// verifier's attest_port.
	DefaultAttestPort = 7444
	// DefaultMaxAttestations bounds concurrent attestation handshakes:
	// each costs a quote or report from hardware that serialises them.
	DefaultMaxAttestations = 4
	// DefaultAttestTimeout bounds one attestation handshake.
	DefaultAttestTimeout = 30 * time.Second
)

// ServeConfig configures `attestd serve`: the join's configuration (the
// same pinned roots, manifest key, devices and files) and the two
// endpoints.
type ServeConfig struct {
	Config
	// Socket is the unix socket (mode 0600) of the peer-set proxy.
	Socket string
	// AttestListen is the TCP address of the attestation endpoint
	// (default ":7444"; "-" serves none).
	AttestListen string
	// MaxAttestations bounds the attestation handshakes run at once.
	MaxAttestations int
	// AttestTimeout bounds one attestation handshake.
	AttestTimeout time.Duration
}

// SetDefaults fills the zero fields with the production values.
func (c *ServeConfig) SetDefaults() {
	c.Config.SetDefaults()
	if c.Socket == "" {
		c.Socket = DefaultSocket
	}
	if c.AttestListen == "" {
		c.AttestListen = ":" + strconv.Itoa(DefaultAttestPort)
	}
	if c.MaxAttestations == 0 {
		c.MaxAttestations = DefaultMaxAttestations
	}
	if c.AttestTimeout == 0 {
		c.AttestTimeout = DefaultAttestTimeout
	}
}

// Validate names the first bad field.
func (c *ServeConfig) Validate() error {
	if err := c.Config.Validate(); err != nil {
		return err
	}
	if !filepath.IsAbs(c.Socket) {
		return fmt.Errorf("config socket %q: want an absolute path", c.Socket)
	}
	if c.AttestListen != "-" {
		if _, port, err := net.SplitHostPort(c.AttestListen); err != nil || port == "" {
			return fmt.Errorf("config attest-listen %q: want [host]:port or \"-\"", c.AttestListen)
		}
	}
	if c.MaxAttestations < 1 || c.MaxAttestations > 64 {
		return fmt.Errorf("config max-attestations %d: want 1-64", c.MaxAttestations)
	}
	if c.AttestTimeout <= 0 {
		return fmt.Errorf("config attest-timeout %s: want > 0", c.AttestTimeout)
	}
	return nil
}

// LoadRecord reads RunDir/admission.json strictly: serve attests with the
// claims in it, so a field it does not know is an error, not a default.
func LoadRecord(path string) (*Record, error) {
	b, err := readSmall(path)
	if err != nil {
		return nil, fmt.Errorf("admission record: %w", err)
	}
	r, err := ParseRecord(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return r, nil
}

// ParseRecord decodes and checks an admission record.
func ParseRecord(b []byte) (*Record, error) {
	var r Record
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("admission record: %w", err)
	}
	if dec.More() {
		return nil, errors.New("admission record: trailing data")
	}
	if r.Cluster == "" || len(r.Cluster) > 64 {
		return nil, fmt.Errorf("admission record: cluster: length %d, want 1-64", len(r.Cluster))
	}
	if err := r.Claims.Validate(); err != nil {
		return nil, fmt.Errorf("admission record: %w", err)
	}
	if r.Claims.Role != attest.RoleNode || r.Claims.NodeID != r.NodeID || r.Claims.Profile != r.Profile {
		return nil, fmt.Errorf("admission record: claims (node %q, role %q, profile %q) are not the admitted node %q profile %q",
			r.Claims.NodeID, r.Claims.Role, r.Claims.Profile, r.NodeID, r.Profile)
	}
	if len(r.Claims.WireGuardKey) != 32 {
		return nil, fmt.Errorf("admission record: claims.wireguard_key: %d bytes, want 32", len(r.Claims.WireGuardKey))
	}
	return &r, nil
}

// serveClaims are the claims serve attests with: the join's, read from the
// admission record, after checking that they still describe this boot —
// the node ID this machine has, the public key of the WireGuard key file
// meshd uses. The endpoints are recomputed only to warn: keyd published
// the join's, and a node that claimed others now would be telling keyd
// one thing and its peers another.
func serveClaims(rec *Record, cfg *Config, deps *Deps, log *slog.Logger) (attest.Claims, error) {
	c := rec.Claims
	c.WireGuardKey = bytes.Clone(c.WireGuardKey)
	c.DiskUUIDs = slices.Clone(c.DiskUUIDs)
	c.Endpoints = slices.Clone(c.Endpoints)
	id, err := deps.NodeID()
	if err != nil {
		return attest.Claims{}, err
	}
	if id != c.NodeID {
		return attest.Claims{}, fmt.Errorf("admission record: node %q, this machine is %q", c.NodeID, id)
	}
	kb, err := readSmall(cfg.WireGuardKeyPath)
	if err != nil {
		return attest.Claims{}, fmt.Errorf("WireGuard key: %w", err)
	}
	k, err := wgtypes.ParseKey(strings.TrimSpace(string(kb)))
	if err != nil {
		return attest.Claims{}, fmt.Errorf("WireGuard key %s: %w", cfg.WireGuardKeyPath, err)
	}
	pub := k.PublicKey()
	if !bytes.Equal(pub[:], c.WireGuardKey) {
		return attest.Claims{}, fmt.Errorf("WireGuard key %s: its public key %s is not the one the node was admitted with", cfg.WireGuardKeyPath, pub)
	}
	if eps, err := deps.Endpoints(cfg.WireGuardPort); err != nil {
		log.Warn("endpoints: cannot recompute; serving the admitted ones", "err", err)
	} else if !slices.Equal(eps, c.Endpoints) {
		log.Warn("endpoints changed since the admission; serving the admitted ones (a new admission publishes new ones)",
			"admitted", strings.Join(c.Endpoints, ","), "now", strings.Join(eps, ","))
	}
	return c, nil
}

// Serve runs the node's daemon half of attestd until ctx ends: it detects
// the platform as the join did and serves
//
//   - on cfg.Socket (0600), GET /v1/peers for meshd, proxied to keyd over
//     mutual aTLS with fresh evidence and the join's claims;
//   - on cfg.AttestListen, the node's attestation endpoint: an aTLS
//     handshake as server, with the node's evidence and claims, for any
//     client, attested or not (the owner's `verifier node` and `verifier
//     cluster`), then close.
func Serve(ctx context.Context, cfg ServeConfig, deps Deps, log *slog.Logger) error {
	cfg.SetDefaults()
	deps.defaults()
	if err := cfg.Validate(); err != nil {
		return err
	}
	pinned, verifiers, err := loadPinned(&cfg.Config)
	if err != nil {
		return err
	}
	rec, err := LoadRecord(filepath.Join(cfg.RunDir, "admission.json"))
	if err != nil {
		return err
	}
	claims, err := serveClaims(rec, &cfg.Config, &deps, log)
	if err != nil {
		return err
	}
	mach, err := deps.Detect(ctx, &cfg.Config, log)
	if err != nil {
		return fmt.Errorf("detect platform: %w", err)
	}
	defer mach.Close()
	if string(mach.Platform) != rec.Platform {
		return fmt.Errorf("platform %s, but the node was admitted on %s", mach.Platform, rec.Platform)
	}
	log.Info("platform", "platform", mach.Platform, "why", mach.Why)

	up := &upstream{cfg: &cfg.Config, log: log, pinned: pinned, verifiers: verifiers, cluster: rec.Cluster,
		claims: claims, mach: mach, addrs: keydAddrs(rec, cfg.HintsPath, log)}
	defer up.close()
	sock, err := listenUnix(cfg.Socket)
	if err != nil {
		return err
	}
	psrv := &http.Server{Handler: PeersProxy(up, log), ReadHeaderTimeout: 5 * time.Second,
		// The long poll's wait, a fresh aTLS handshake and the answer.
		WriteTimeout: api.MaxPeersWait + cfg.AttemptTimeout + 10*time.Second}
	errc := make(chan error, 2)
	go func() { errc <- fmt.Errorf("peer-set socket %s: %w", cfg.Socket, psrv.Serve(sock)) }()
	defer psrv.Close()

	attestAddr := "off"
	if cfg.AttestListen != "-" {
		ln, err := net.Listen("tcp", cfg.AttestListen)
		if err != nil {
			return fmt.Errorf("attestation endpoint %s: %w", cfg.AttestListen, err)
		}
		al, err := atls.NewListener(ln, AttestationConfig(rec.Cluster, claims, mach.Attester, cfg.AttestTimeout, log),
			atls.ListenerOptions{MaxHandshakes: cfg.MaxAttestations})
		if err != nil {
			ln.Close()
			return fmt.Errorf("attestation endpoint: %w", err)
		}
		defer al.Close()
		attestAddr = ln.Addr().String()
		go func() { errc <- fmt.Errorf("attestation endpoint %s: %w", attestAddr, serveAttestations(al, log)) }()
	}
	fmt.Fprintf(deps.Console, "attestd: serving node=%s peers=%s attestation=%s endpoints=%s\n",
		claims.NodeID, cfg.Socket, attestAddr, strings.Join(claims.Endpoints, ","))
	select {
	case <-ctx.Done():
		return nil
	case err := <-errc:
		return err
	}
}

// loadPinned reads the manifest key, the Rekor log key if one is pinned,
// and the pinned roots' verifiers.
func loadPinned(cfg *Config) (*pinnedManifest, map[attest.Platform]attest.Verifier, error) {
	keyPEM, err := readSmall(cfg.ManifestKeyPath)
	if err != nil {
		return nil, nil, fmt.Errorf("manifest key: %w", err)
	}
	key, err := manifest.ParsePublicKey(keyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("manifest key %s: %w", cfg.ManifestKeyPath, err)
	}
	man := &pinnedManifest{key: key, allowNoLog: cfg.ManifestWithoutLogProof}
	if cfg.RekorKeyPath != "" {
		b, err := readSmall(cfg.RekorKeyPath)
		if err != nil {
			return nil, nil, fmt.Errorf("rekor key: %w", err)
		}
		if man.rekor, err = manifest.ParsePublicKey(b); err != nil {
			return nil, nil, fmt.Errorf("rekor key %s: %w", cfg.RekorKeyPath, err)
		}
	}
	rc, err := LoadRoots(cfg.RootsPath)
	if err != nil {
		return nil, nil, err
	}
	verifiers, err := rc.Verifiers(filepath.Dir(cfg.RootsPath))
	if err != nil {
		return nil, nil, fmt.Errorf("roots %s: %w", cfg.RootsPath, err)
	}
	if len(verifiers) == 0 {
		return nil, nil, fmt.Errorf("roots %s: no platform pinned, so no keyd could ever be verified", cfg.RootsPath)
	}
	return man, verifiers, nil
}

// keydAddrs are the keyd that admitted the node, then the other hints.
func keydAddrs(rec *Record, hintsPath string, log *slog.Logger) []string {
	out := []string{rec.Keyd}
	hb, err := readSmall(hintsPath)
	var hints *iapi.Hints
	if err == nil {
		hints, err = ParseHints(hb)
	}
	if err != nil {
		log.Warn("hints unusable; following only the keyd that admitted this node", "err", err)
		return out
	}
	for _, a := range hints.Keyd {
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

// listenUnix listens on path with mode 0600. A socket left by an earlier
// run is removed; anything else at path is an error.
func listenUnix(path string) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("peer-set socket %s: exists and is not a socket", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("peer-set socket %s: %w", path, err)
		}
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("peer-set socket %s: %w", path, err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("peer-set socket %s: %w", path, err)
	}
	// Only root (meshd) may ask: the answer is the cluster's directory.
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("peer-set socket %s: %w", path, err)
	}
	return ln, nil
}

// AttestationConfig is the server side of the node's attestation
// endpoint: it attests with the node's claims and accepts any client,
// attested or not, since the owner's verifier has no hardware to attest
// with. Nothing is served over the session, so an unattested client gains
// evidence that this node is what it claims, and nothing else.
func AttestationConfig(cluster string, claims attest.Claims, a attest.Attester, timeout time.Duration, log *slog.Logger) *atls.Config {
	return &atls.Config{ClusterID: cluster, Claims: claims, Attester: a, AllowUnattestedPeer: true,
		HandshakeTimeout: timeout, Logger: log}
}

// serveAttestations accepts attested sessions and closes each: the
// handshake was the whole service. The listener bounds concurrency and
// time per handshake.
func serveAttestations(l *atls.Listener, log *slog.Logger) error {
	for {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		log.Info("attested to a client", "remote", c.RemoteAddr().String())
		c.Close()
	}
}

// peerSource is keyd's peer directory as the proxy uses it.
type peerSource interface {
	Peers(ctx context.Context, since uint64, wait time.Duration) (*api.PeerSet, error)
}

// PeersProxy serves GET /v1/peers?since=&wait= from src and nothing else.
// The socket is reachable by local root processes only, but it stands in
// for the node's attested session with keyd: proxying any other path
// (admit above all, which returns disk keys) would make it a way to get
// secrets without attesting, and a request to hand the owner's revocation
// on would speak with the node's identity. keyd's answers are re-encoded
// from the parsed set, and its errors mapped to the generic ones
// api.Client understands (403 denied, 503 retry later).
func PeersProxy(src peerSource, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+api.PathPeers, func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		for k := range q {
			if k != "since" && k != "wait" {
				proxyErr(w, http.StatusBadRequest, "query "+k+": unknown; want since and wait")
				return
			}
		}
		var since uint64
		if s := q.Get("since"); s != "" {
			var err error
			if since, err = strconv.ParseUint(s, 10, 64); err != nil {
				proxyErr(w, http.StatusBadRequest, "since: want a revision number")
				return
			}
		}
		wait := api.DefaultPeersWait
		if s := q.Get("wait"); s != "" {
			d, err := time.ParseDuration(s)
			if err != nil || d < 0 || d > api.MaxPeersWait {
				proxyErr(w, http.StatusBadRequest, fmt.Sprintf("wait: want a duration up to %s", api.MaxPeersWait))
				return
			}
			wait = d
		}
		set, err := src.Peers(r.Context(), since, wait)
		switch {
		case err == nil:
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(set)
		case errors.Is(err, api.ErrDenied):
			log.Warn("keyd denied the peer-set request", "err", err)
			proxyErr(w, http.StatusForbidden, api.ErrTextDenied)
		default:
			log.Warn("peer set: keyd unreachable", "err", err)
			w.Header().Set(api.HeaderRetryAfter, "1")
			proxyErr(w, http.StatusServiceUnavailable, api.ErrTextRetryLater)
		}
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		log.Warn("peer-set socket: refused", "method", r.Method, "path", r.URL.Path)
		proxyErr(w, http.StatusForbidden, api.ErrTextDenied)
	})
	return mux
}

func proxyErr(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(api.Error{Error: msg})
}

// upstream is keyd's peer directory on the node's attested sessions: the
// manifest is fetched and verified against the pinned key on first use
// (keyd is judged against its keyd reference), then one api.Client per
// keyd address, tried in order from the last that answered.
type upstream struct {
	cfg       *Config
	log       *slog.Logger
	pinned    *pinnedManifest
	verifiers map[attest.Platform]attest.Verifier
	cluster   string
	claims    attest.Claims
	mach      *Machine
	addrs     []string

	mu      sync.Mutex
	man     *manifest.Manifest
	clients map[string]*api.Client
	cur     int
}

func (u *upstream) client(ctx context.Context, i int) (*api.Client, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	addr := u.addrs[i]
	if c := u.clients[addr]; c != nil {
		return c, nil
	}
	if u.man == nil {
		fctx, cancel := context.WithTimeout(ctx, u.cfg.AttemptTimeout)
		b, err := fetchManifest(fctx, addr, u.cluster, u.claims, u.cfg.AttemptTimeout)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("fetch manifest: %w", err)
		}
		res, err := verifyManifest(b, u.pinned)
		if err != nil {
			u.log.Error("manifest from keyd refused", "keyd", addr, "err", err)
			return nil, err
		}
		if res.Log != manifest.LogVerified {
			u.log.Error("MANIFEST ACCEPTED WITHOUT A TRANSPARENCY-LOG PROOF: --manifest-without-log-proof is set (test images only)",
				"keyd", addr, "log", string(res.Log), "key_id", res.KeyID)
		}
		u.man = res.Manifest
	}
	// The join's session shape: keyd verified first, this node's
	// evidence only for a verified keyd. verified only tells a denial
	// apart for admit, which this session never calls.
	cfg := joinConfig(u.cluster, u.claims, u.mach, u.verifiers, u.man, u.cfg.AttemptTimeout, new(atomic.Bool))
	cfg.Logger = u.log
	c, err := api.NewClient(addr, cfg)
	if err != nil {
		return nil, err
	}
	if u.clients == nil {
		u.clients = map[string]*api.Client{}
	}
	u.clients[addr] = c
	return c, nil
}

// Peers asks the current keyd, then the others in order. A denial is
// keyd's verdict (revoked) and is returned at once.
func (u *upstream) Peers(ctx context.Context, since uint64, wait time.Duration) (*api.PeerSet, error) {
	u.mu.Lock()
	start := u.cur
	u.mu.Unlock()
	var errs []error
	for n := range u.addrs {
		i := (start + n) % len(u.addrs)
		c, err := u.client(ctx, i)
		if err == nil {
			var set *api.PeerSet
			if set, err = c.Peers(ctx, since, wait); err == nil {
				u.mu.Lock()
				u.cur = i
				u.mu.Unlock()
				return set, nil
			}
			if errors.Is(err, api.ErrDenied) {
				return nil, err
			}
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		errs = append(errs, fmt.Errorf("keyd %s: %w", u.addrs[i], err))
	}
	return nil, errors.Join(errs...)
}

func (u *upstream) close() {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, c := range u.clients {
		c.Close()
	}
}
