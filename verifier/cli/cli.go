// Package cli is the cluster owner's `verifier` command: config, init,
// recover, disk-recovery-key, revoke, node and cluster. It is not a daemon and keeps no state
// but its configuration directory (docs/verifier.md).
package cli

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/palisade-cc/palisade/internal/atls"
	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/cvm/reference"
	"github.com/palisade-cc/palisade/keyd/api"
	"github.com/palisade-cc/palisade/verifier/config"
)

// Exit codes, one per failure class (docs/verifier.md §Exit codes). When a
// run finds several, the most serious wins: log > denied > unreachable.
const (
	ExitOK          = 0
	ExitError       = 1 // local failure: config, files, keyd refused an owner request
	ExitUsage       = 2
	ExitDenied      = 3 // attestation denied, or a node's evidence does not match its admission
	ExitLog         = 4 // log inconsistent: bad checkpoint, fork, rollback, omitted or revoked node
	ExitUnreachable = 5
)

// exitError carries its exit code.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func fail(code int, format string, a ...any) error {
	return &exitError{code, fmt.Errorf(format, a...)}
}

// Env is what a run may touch; the zero fields default to the process's.
type Env struct {
	Stdout, Stderr io.Writer
	// ConfigDir overrides config.Dir().
	ConfigDir string
	// Terminal says whether Stdout is a terminal (colours); nil: detect.
	Terminal *bool
	Now      func() time.Time
	// Parallel bounds concurrent node attestations (0: 8).
	Parallel int
	// Transport, if set, wraps the HTTP transport to keyd (inside aTLS):
	// tests use it to play a keyd that lies in its answers.
	Transport func(http.RoundTripper) http.RoundTripper
	// LoadFirmware reads `image --firmware`'s directory (nil:
	// reference.LoadFirmware, which checks the pinned digests); tests
	// hand synthetic firmware through it.
	LoadFirmware func(dir string) (*reference.Firmware, error)
}

type command struct {
	name, usage, help, example string
	run                        func(ctx context.Context, e *Env, fs *flag.FlagSet, args []string) error
	flags                      func(fs *flag.FlagSet)
}

func commands() []*command {
	return []*command{cmdConfig(), cmdInit(), cmdRecover(), cmdDiskRecoveryKey(), cmdRevoke(), cmdNode(), cmdCluster(), cmdImage()}
}

// Run runs the verifier with args (without the program name) and returns
// the process's exit code.
func Run(ctx context.Context, args []string, e Env) int {
	if e.Stdout == nil {
		e.Stdout = os.Stdout
	}
	if e.Stderr == nil {
		e.Stderr = os.Stderr
	}
	if e.Now == nil {
		e.Now = time.Now
	}
	if e.Parallel <= 0 {
		e.Parallel = 8
	}
	if e.Terminal == nil {
		t := isTerminal(e.Stdout)
		e.Terminal = &t
	}
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(e.Stderr)
		if len(args) == 0 {
			return ExitUsage
		}
		return ExitOK
	}
	for _, c := range commands() {
		if c.name != args[0] {
			continue
		}
		fs := flag.NewFlagSet("verifier "+c.name, flag.ContinueOnError)
		fs.SetOutput(e.Stderr)
		fs.StringVar(&e.ConfigDir, "config", e.ConfigDir, "configuration directory (default: the user config dir/palisade)")
		if c.flags != nil {
			c.flags(fs)
		}
		fs.Usage = func() {
			fmt.Fprintf(e.Stderr, "usage: verifier %s\n\n%s\n\nflags:\n", c.usage, c.help)
			fs.PrintDefaults()
			fmt.Fprintf(e.Stderr, "\nexample:\n%s\n", c.example)
		}
		if err := fs.Parse(args[1:]); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return ExitOK
			}
			return ExitUsage
		}
		err := c.run(ctx, &e, fs, fs.Args())
		if err == nil {
			return ExitOK
		}
		fmt.Fprintf(e.Stderr, "verifier %s: %v\n", c.name, err)
		var xe *exitError
		if errors.As(err, &xe) {
			return xe.code
		}
		return ExitError
	}
	fmt.Fprintf(e.Stderr, "verifier: unknown command %q\n", args[0])
	usage(e.Stderr)
	return ExitUsage
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: verifier COMMAND [flags] [args]\n\ncommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-40s %s\n", c.usage, strings.SplitN(c.help, "\n", 2)[0])
	}
	fmt.Fprintln(w, "\nexit codes: 0 ok, 1 error, 2 usage, 3 attestation denied, 4 log inconsistent, 5 unreachable\n'verifier COMMAND --help' shows an example.")
}

func nargs(fs *flag.FlagSet, args []string, n int) error {
	if len(args) != n {
		fs.Usage()
		return fail(ExitUsage, "want %d argument(s), got %d", n, len(args))
	}
	return nil
}

func (e *Env) dir() (string, error) {
	if e.ConfigDir != "" {
		return e.ConfigDir, nil
	}
	return config.Dir()
}

func (e *Env) load() (*config.Config, error) {
	d, err := e.dir()
	if err != nil {
		return nil, err
	}
	return config.Load(d)
}

// ---- config init ----

func cmdConfig() *command {
	var cluster, keyd, logKey string
	return &command{
		name: "config", usage: "config init",
		help:    "Write a commented default verifier.json (refuses to overwrite).\nWithout --cluster a random cluster ID is generated.",
		example: "  verifier config init --cluster prod-eu1 --keyd 10.0.0.5:7443 --log-key 'palisade-keyd/prod-eu1+1a2b3c4d+AW…'",
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&cluster, "cluster", "", "cluster ID (default: random)")
			fs.StringVar(&keyd, "keyd", "", "keyd address host:port")
			fs.StringVar(&logKey, "log-key", "", "keyd's checkpoint verifier key")
		},
		run: func(ctx context.Context, e *Env, fs *flag.FlagSet, args []string) error {
			// Flags may follow "init" (as in the example): Go's flag
			// package stops at the first argument, so parse the rest.
			if len(args) > 0 && args[0] == "init" {
				if err := fs.Parse(args[1:]); err != nil {
					if errors.Is(err, flag.ErrHelp) {
						return nil
					}
					return fail(ExitUsage, "%v", err)
				}
				args = append([]string{"init"}, fs.Args()...)
			}
			if err := nargs(fs, args, 1); err != nil {
				return err
			}
			if args[0] != "init" {
				return fail(ExitUsage, "config %q: want init", args[0])
			}
			d, err := e.dir()
			if err != nil {
				return err
			}
			if cluster == "" {
				b := make([]byte, 6)
				rand.Read(b)
				cluster = "c-" + hex.EncodeToString(b)
			}
			p := filepath.Join(d, config.FileName)
			if err := config.WriteExclusive(p, config.Default(cluster, keyd, logKey)); err != nil {
				return err
			}
			fmt.Fprintf(e.Stdout, "wrote %s (cluster %s); edit roots, references and log_key, then run 'verifier init'\n", p, cluster)
			return nil
		},
	}
}

// ---- aTLS sides ----

// ownerClaims are the owner's hello claims: the owner never attests (no
// hardware on a laptop), so they are its word only; keyd allows such a
// peer just the owner endpoints (api.UnattestedAllowed).
func ownerClaims() attest.Claims {
	return attest.Claims{NodeID: "owner", Role: attest.RoleNode, Profile: "owner"}
}

// atlsConfig is the owner's aTLS side: no attester, and the peer verified
// against the pinned roots and the reference of its claimed role and
// profile; accept is the role and identity policy.
func atlsConfig(c *config.Config, accept func(attest.Claims) error) (*atls.Config, error) {
	vs, err := c.Verifiers()
	if err != nil {
		return nil, err
	}
	refs, err := c.ReadReferences()
	if err != nil {
		return nil, err
	}
	return &atls.Config{
		ClusterID: c.ClusterID, Claims: ownerClaims(), Verifiers: vs,
		Reference: func(_ context.Context, peer attest.Claims) (*attest.Reference, error) {
			r, err := refs.Lookup(peer.Role, peer.Profile)
			if err != nil {
				return nil, attest.Deny(attest.ClassPolicy, err)
			}
			return r, nil
		},
		AcceptPeer: accept,
	}, nil
}

func acceptKeyd(p attest.Claims) error {
	if p.Role != attest.RoleKeyd {
		return fmt.Errorf("peer claims role %q, want keyd", p.Role)
	}
	return nil
}

// keydClient is an api.Client to the keyd at addr (default: the config's
// first) that verifies keyd on every connection.
func keydClient(c *config.Config, addr string, e *Env) (*api.Client, error) {
	if addr == "" {
		addr = c.Keyd[0]
	}
	cfg, err := atlsConfig(c, acceptKeyd)
	if err != nil {
		return nil, err
	}
	cl, err := api.NewClient(addr, cfg)
	if err == nil && e.Transport != nil {
		cl.HTTP.Transport = e.Transport(cl.HTTP.Transport)
	}
	return cl, err
}

// secretNotTaken says an init request's error proves keyd did not take
// the secret: the handshake failed or was denied (nothing was sent), or
// keyd answered with a refusal.
func secretNotTaken(err error) bool {
	var se *api.StatusError
	return errors.Is(err, api.ErrDenied) || errors.Is(err, api.ErrRetryLater) || errors.Is(err, api.ErrLocked) ||
		isDenial(err) || errors.As(err, &se)
}

// isDenial says err is a verification failure with a class (attest.ClassOf
// names every other error "internal", so it cannot tell).
func isDenial(err error) bool {
	var d *attest.Error
	return errors.As(err, &d)
}

// isNetErr: the connection failed or broke (after the handshake, so it is
// not wrapped as api.ErrRetryLater).
func isNetErr(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED)
}

// classify maps an error talking to keyd to its exit code: the local
// verification of keyd failed (a class) → denied; network → unreachable.
func classify(what string, err error) error {
	var xe *exitError
	if errors.As(err, &xe) {
		return err
	}
	switch {
	case isDenial(err) && !errors.Is(err, api.ErrDenied):
		return &exitError{ExitDenied, fmt.Errorf("%s: attestation denied (%s): %w", what, attest.ClassOf(err), err)}
	case errors.Is(err, api.ErrRetryLater), isNetErr(err):
		return &exitError{ExitUnreachable, fmt.Errorf("%s: unreachable: %w", what, err)}
	}
	return fmt.Errorf("%s: %w", what, err)
}

// ---- init / recover / revoke ----

func cmdInit() *command {
	var meshIPv4 string
	return &command{
		name: "init", usage: "init ADDR",
		help:    "Attest the first control-plane node's keyd at ADDR, generate the cluster master\nsecret and the owner key, and hand keyd the secret. Writes the owner key and the\nsecret file (mode 0600, never overwritten): keep a copy offline.",
		example: "  verifier init 10.0.0.5:7443",
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&meshIPv4, "mesh-ipv4", "", "optional IPv4 range (CIDR) for mesh addresses")
		},
		run: func(ctx context.Context, e *Env, fs *flag.FlagSet, args []string) error {
			if err := nargs(fs, args, 1); err != nil {
				return err
			}
			c, err := e.load()
			if err != nil {
				return err
			}
			master := make([]byte, api.MasterSecretSize)
			if _, err := rand.Read(master); err != nil {
				return err
			}
			pub, priv, err := ed25519.GenerateKey(rand.Reader)
			if err != nil {
				return err
			}
			// Write both files before keyd gets the secret: a secret keyd
			// holds but the owner lost cannot be recovered. On failure to
			// init, they are removed again (we created them: O_EXCL).
			keyPath, secPath := c.Path(c.OwnerKey), c.Path(c.Secret)
			if err := config.WriteExclusive(secPath, config.EncodeSecret(c.ClusterID, master)); err != nil {
				return fmt.Errorf("config.secret: %w", err)
			}
			if err := config.WriteExclusive(keyPath, []byte(hex.EncodeToString(priv.Seed())+"\n")); err != nil {
				os.Remove(secPath)
				return fmt.Errorf("config.owner_key: %w", err)
			}
			cl, err := keydClient(c, args[0], e)
			if err == nil {
				defer cl.Close()
				err = cl.Init(ctx, &api.InitRequest{ClusterID: c.ClusterID, MasterSecret: master,
					Config: api.ClusterConfig{MeshIPv4: meshIPv4}, OwnerKey: pub})
				if err != nil && !secretNotTaken(err) {
					// keyd may hold the secret now: deleting the owner's
					// copy could leave a cluster nobody can recover.
					return fail(ExitUnreachable, "init %s: no answer after the master secret was sent (%v).\n"+
						"keyd may be initialised: the owner's secret and key are KEPT in %s and %s.\n"+
						"Check with 'verifier cluster %s'; only if keyd is not initialised, move both files away and run init again.",
						args[0], err, secPath, keyPath, args[0])
				}
			}
			if err != nil {
				os.Remove(secPath)
				os.Remove(keyPath)
				return classify("init "+args[0], err)
			}
			fmt.Fprintf(e.Stdout, "cluster %s initialised at %s\nowner key: %s\nsecret:    %s (keep a copy offline)\n", c.ClusterID, args[0], keyPath, secPath)
			return nil
		},
	}
}

func cmdRecover() *command {
	return &command{
		name: "recover", usage: "recover ADDR",
		help:    "Attest the keyd at ADDR and hand it the master secret from the owner's secret file\n(keyd accepts only the secret it was initialised with).",
		example: "  verifier recover 10.0.0.5:7443",
		run: func(ctx context.Context, e *Env, fs *flag.FlagSet, args []string) error {
			if err := nargs(fs, args, 1); err != nil {
				return err
			}
			c, err := e.load()
			if err != nil {
				return err
			}
			m, err := c.ReadSecret()
			if err != nil {
				return err
			}
			cl, err := keydClient(c, args[0], e)
			if err != nil {
				return err
			}
			defer cl.Close()
			if err := cl.Recover(ctx, &api.RecoverRequest{MasterSecret: m}); err != nil {
				return classify("recover "+args[0], err)
			}
			fmt.Fprintf(e.Stdout, "keyd at %s unlocked\n", args[0])
			return nil
		},
	}
}

func cmdRevoke() *command {
	var keyd string
	return &command{
		name: "revoke", usage: "revoke NODE",
		help:    "Revoke NODE with an owner-signed request: keyd withdraws it from the peer set\nand denies its next handshake.",
		example: "  verifier revoke worker-17",
		flags:   func(fs *flag.FlagSet) { fs.StringVar(&keyd, "keyd", "", "keyd address (default: the config's first)") },
		run: func(ctx context.Context, e *Env, fs *flag.FlagSet, args []string) error {
			if err := nargs(fs, args, 1); err != nil {
				return err
			}
			c, err := e.load()
			if err != nil {
				return err
			}
			key, err := c.ReadOwnerKey()
			if err != nil {
				return err
			}
			req := &api.OwnerRequest{Action: api.ActionRevokeNode, ClusterID: c.ClusterID, NodeID: args[0],
				Timestamp: e.Now().Unix(), Nonce: make([]byte, api.OwnerNonceSize)}
			if _, err := rand.Read(req.Nonce); err != nil {
				return err
			}
			req.Sign(key)
			if err := req.Validate(); err != nil {
				return fail(ExitUsage, "%v", err)
			}
			cl, err := keydClient(c, keyd, e)
			if err != nil {
				return err
			}
			defer cl.Close()
			if err := cl.Revoke(ctx, req); err != nil {
				return classify("revoke "+args[0], err)
			}
			fmt.Fprintf(e.Stdout, "node %s revoked\n", args[0])
			return nil
		},
	}
}
