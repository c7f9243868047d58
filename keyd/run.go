package keyd

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/palisade-cc/palisade/internal/atls"
	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/attest/snp"
	"github.com/palisade-cc/palisade/internal/attest/tdx"
	"github.com/palisade-cc/palisade/internal/attest/tpm"
	"github.com/palisade-cc/palisade/keyd/api"
	"github.com/palisade-cc/palisade/keyd/auditlog"
	"github.com/palisade-cc/palisade/keyd/store"
	"github.com/palisade-cc/palisade/keyd/store/bbolt"
	"github.com/palisade-cc/palisade/keyd/store/etcd"
)

// openStore opens the configured state backend: bbolt at state_path, or
// the etcd cluster at store.endpoints under store.prefix.
func openStore(ctx context.Context, cfg *Config) (store.Store, error) {
	switch cfg.Store.Kind {
	case StoreEtcd:
		st, err := etcd.Open(ctx, cfg.Store.Endpoints, cfg.Store.prefix(cfg.ClusterID), etcd.Options{})
		if err != nil {
			return nil, fmt.Errorf("config.store: etcd %v: %w", cfg.Store.Endpoints, err)
		}
		return st, nil
	case "", StoreBbolt:
		st, err := bbolt.Open(cfg.StatePath, bbolt.Options{})
		if err != nil {
			return nil, fmt.Errorf("config.state_path %s: %w", cfg.StatePath, err)
		}
		return st, nil
	}
	return nil, fmt.Errorf("config.store.kind %q: want %q or %q", cfg.Store.Kind, StoreBbolt, StoreEtcd)
}

// Run starts keyd from cfg with production dependencies (the platform's
// attester, verifiers pinned to the configured roots, bbolt state) and
// serves until ctx is done. SIGHUP reloads the manifest (rollback-checked).
func Run(ctx context.Context, cfg *Config, logger *slog.Logger) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	tuneRuntime()
	st, err := openStore(ctx, cfg)
	if err != nil {
		return err
	}
	defer st.Close()
	logKey, err := readOrCreateKey(cfg.LogKeyFile)
	if err != nil {
		return fmt.Errorf("config.log_key_file: %w", err)
	}
	origin := "palisade-keyd/" + cfg.ClusterID
	signer, vkey, err := auditlog.NewSigner(origin, ed25519.NewKeyFromSeed(logKey))
	if err != nil {
		return err
	}
	lg, err := auditlog.New(st, origin, signer)
	if err != nil {
		return err
	}
	logger.Info("admission log", "origin", origin, "verifier_key", vkey)
	var sealKey []byte
	if cfg.SealKeyFile != "" {
		if sealKey, err = readKey(cfg.SealKeyFile); err != nil {
			return fmt.Errorf("config.seal_key_file: %w", err)
		}
	}
	manKeys, err := LoadManifestKeys(cfg.ManifestKeys)
	if err != nil {
		return err
	}
	// A manifest needs a Rekor inclusion proof verified with the pinned
	// log key (ARCHITECTURE §6); only a test cluster waives it.
	manOpts := ManifestOptions{Keys: manKeys, AllowNoLogProof: cfg.ManifestWithoutLogProof, Logger: logger}
	switch {
	case cfg.ManifestLogKey != "":
		if manOpts.Log, err = LoadManifestLogVerifier(cfg.ManifestLogKey, manKeys); err != nil {
			return err
		}
	case !cfg.ManifestWithoutLogProof:
		return errors.New("config.manifest_log_key: empty, want the Rekor log's PEM public key (manifest_without_log_proof only on test clusters)")
	}
	man, err := LoadSignedManifest(cfg.ManifestPath, manOpts)
	if err != nil {
		return fmt.Errorf("config.manifest_path: %w", err)
	}
	att, err := attesterFor(cfg.Attester)
	if err != nil {
		return fmt.Errorf("config.attester: %w", err)
	}
	verifiers, err := cfg.Roots.Verifiers("")
	if err != nil {
		return err
	}
	var kube KubeIssuer
	if cfg.Kube != nil {
		if NewKubeIssuer == nil {
			return errors.New("config.kube: this keyd was built without Kubernetes support (go build -tags kube ./keyd/cmd/keyd)")
		}
		if kube, err = NewKubeIssuer(ctx, cfg.Kube, logger); err != nil {
			return fmt.Errorf("config.kube: %w", err)
		}
	}
	reg := prometheus.NewRegistry()
	k, err := New(ctx, cfg, Options{Store: st, Log: lg, Attester: att, Verifiers: verifiers, References: man,
		SealKey: sealKey, Logger: logger, Registerer: reg, Kube: kube})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return err
	}
	logger.Info("keyd listening", "addr", ln.Addr().String(), "cluster", cfg.ClusterID, "unlocked", k.Unlocked())
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if cfg.MetricsListen != "" {
		ms := &http.Server{Addr: cfg.MetricsListen, Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := ms.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				logger.Error("metrics listener", "err", err)
			}
		}()
		defer ms.Close()
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				o := manOpts
				o.LastAccepted = k.refs.Load().SecurityVersion()
				m, err := LoadSignedManifest(cfg.ManifestPath, o)
				if err == nil {
					err = k.AcceptReferences(ctx, m)
				}
				if err != nil {
					logger.Error("manifest reload refused", "err", err)
				}
			}
		}
	}()
	if cfg.JoinFrom != "" && !k.Unlocked() {
		go k.joinLoop(ctx, cfg.JoinFrom, verifiers, man)
	}
	return k.Serve(ctx, ln)
}

// joinLoop gets the master secret from an existing keyd by replica join,
// retrying until it succeeds or ctx ends. The other keyd must prove the
// keyd role's reference values, as this one proves them to it.
func (k *Keyd) joinLoop(ctx context.Context, addr string, verifiers map[attest.Platform]attest.Verifier, refs References) {
	cfg := &atls.Config{
		ClusterID: k.cfg.ClusterID, Claims: k.atls.Claims, Attester: k.atls.Attester, Verifiers: verifiers,
		Reference: func(_ context.Context, peer attest.Claims) (*attest.Reference, error) {
			if peer.Role != attest.RoleKeyd {
				return nil, attest.Denyf(attest.ClassPolicy, "join: peer role %q, want keyd", peer.Role)
			}
			return refs.Lookup(attest.RoleKeyd, peer.Profile)
		},
		HandshakeTimeout: k.atls.HandshakeTimeout, MaxMessageSize: k.atls.MaxMessageSize, Logger: k.logger,
	}
	c, err := api.NewClient(addr, cfg)
	if err != nil {
		k.logger.Error("replica join", "err", err)
		return
	}
	defer c.Close()
	for delay := time.Second; ; delay = min(2*delay, time.Minute) {
		resp, err := c.ReplicaJoin(ctx)
		if err == nil {
			if err = k.installSecret(ctx, resp.MasterSecret, eventReplicaJoined); err == nil {
				k.logger.Info("replica joined", "from", addr)
				return
			}
		}
		k.logger.Warn("replica join failed, retrying", "from", addr, "err", err, "in", delay)
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
	}
}

func attesterFor(c AttesterConfig) (attest.Attester, error) {
	switch c.Platform {
	case attest.PlatformSNP:
		return &snp.Attester{}, nil
	case attest.PlatformTDX:
		return &tdx.Attester{CCELPath: c.CCELPath}, nil
	case attest.PlatformTPM:
		path := c.TPMPath
		if path == "" {
			path = "/dev/tpmrm0"
		}
		return tpm.Open(path, tpm.Options{EventLogPath: c.EventLogPath})
	}
	return nil, fmt.Errorf("platform %q", c.Platform)
}

// readKey reads a 32-byte key: raw, or 64 hex digits.
func readKey(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(b) == 32 {
		return b, nil
	}
	if h, err := hex.DecodeString(strings.TrimSpace(string(b))); err == nil && len(h) == 32 {
		return h, nil
	}
	return nil, fmt.Errorf("%s: want 32 raw bytes or 64 hex digits", path)
}

func readOrCreateKey(path string) ([]byte, error) {
	k, err := readKey(path)
	if !errors.Is(err, os.ErrNotExist) {
		return k, err
	}
	k = make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	if _, err := f.Write([]byte(hex.EncodeToString(k) + "\n")); err != nil {
		f.Close()
		return nil, err
	}
	return k, f.Close()
}
