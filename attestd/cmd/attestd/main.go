// Command attestd joins this node to its cluster's keyd over mutual attested
// TLS; the init starts it as a oneshot stage, then `attestd serve` as a
// daemon that keeps the node's attested session for meshd and answers the
// owner's live attestation (docs/attestd.md).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/palisade-cc/palisade/attestd"
)

const usage = `Usage: attestd [flags]
       attestd serve [flags]   (see attestd serve --help)

Detects the platform (emulated CVM port, SEV-SNP, TDX, TPM), verifies the
signed manifest from keyd against the pinned key, picks this machine's
profile and joins keyd over mutual attested TLS. Then it finds the state
disk (GPT partition "palisade-state" of Palisade's type, or a blank disk),
formats it on first boot or opens it with keyd's key, and mounts it at
/var; without any disk it runs diskless. The init passes
PALISADE_MANIFEST_KEY and PALISADE_HINTS; flags override every path.

Examples:
  attestd
  attestd --hints /tmp/hints.json --manifest-key key.pem --roots roots/roots.json --tpm /dev/tpm0
  attestd --manifest-without-log-proof --deadline 2m     # test images only
  attestd --state-disk off                               # never touch a disk

Exit codes:
  0  admitted; "attestd: admitted node=… profile=… platform=… keyd=… log_index=…"
  1  configuration or local failure (roots, key, hints, no platform)
  2  bad flags
  3  a verified keyd denied this node ("attestd: denied by keyd <addr>")
  4  the signed manifest has no profile of this machine's platform
  5  no keyd verified and admitted this node before --deadline
  6  no state disk, and the other disks hold data ("attestd: disk: refused: …")
  7  the disk's LUKS UUID is not the one keyd recorded for this node
  8  the disk's LUKS2 header was altered, or keyd's key does not open it
  Disk lines: "attestd: disk: formatted <dev> uuid=<u>", "attestd: disk: unlocked
  <dev> uuid=<u> mounted /var", "attestd: disk: none (diskless)".

Flags:
`

const serveUsage = `Usage: attestd serve [flags]

The node's daemon half, started after the join (same binary, same pinned
files): it reads the join's admission record (<run-dir>/admission.json),
checks that this machine's node ID and the WireGuard key file are the ones
admitted, detects the platform again, and serves

  --socket (default /run/palisade/keyd.sock, mode 0600): GET /v1/peers?since=&wait=
      for meshd, proxied to keyd over mutual attested TLS with fresh evidence
      and the join's claims. Every other request is refused: the socket must
      never become a way to get secrets without attesting.
  --attest-listen (default :7444): the node's attestation endpoint for
      "verifier node" and "verifier cluster" (attest_port): an aTLS handshake
      with the node's evidence for any client, then close.

Examples:
  attestd serve
  attestd serve --manifest-without-log-proof             # test images only
  attestd serve --attest-listen 10.0.0.7:7444 --max-attestations 2
  verifier node 10.0.0.7:7444                            # from the owner's laptop

It runs until killed; any exit is a failed boot (the init's daemon rule).

Flags:
`

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

// joinFlags registers the flags the join and serve share.
func joinFlags(fs *flag.FlagSet, cfg *attestd.Config) {
	fs.StringVar(&cfg.RootsPath, "roots", attestd.DefaultRootsPath, "pinned roots section (JSON); relative paths resolve against its directory")
	fs.StringVar(&cfg.ManifestKeyPath, "manifest-key", os.Getenv("PALISADE_MANIFEST_KEY"), "PEM public key that signs manifests (default $PALISADE_MANIFEST_KEY)")
	fs.StringVar(&cfg.RekorKeyPath, "rekor-key", os.Getenv("PALISADE_REKOR_KEY"), "PEM public key of the pinned Rekor log; manifests must carry its inclusion proof (default $PALISADE_REKOR_KEY)")
	fs.StringVar(&cfg.HintsPath, "hints", os.Getenv("PALISADE_HINTS"), "untrusted hints file (default $PALISADE_HINTS)")
	fs.StringVar(&cfg.TPMPath, "tpm", "", "TPM device (default: probe /dev/tpmrm0, /dev/tpm0)")
	fs.StringVar(&cfg.CVMPortPath, "cvm-port", "", "emulated CVM port device (default: search virtio-ports)")
	fs.StringVar(&cfg.CCELPath, "ccel", "", "CC event log file (TDX; default firmware's table, or <run-dir>/ccel on an emulated port)")
	fs.StringVar(&cfg.RunDir, "run-dir", attestd.DefaultRunDir, "directory of admission.json, wg.key, ccel")
	fs.StringVar(&cfg.WireGuardKeyPath, "wireguard-key", "", "the WireGuard private key file (default <run-dir>/wg.key)")
	fs.IntVar(&cfg.WireGuardPort, "wireguard-port", attestd.DefaultWireGuardPort, "meshd's UDP port, claimed in the endpoints (must equal meshd's listen_port)")
	fs.BoolVar(&cfg.ManifestWithoutLogProof, "manifest-without-log-proof", false, "accept a manifest without a transparency-log proof (test images only)")
	fs.DurationVar(&cfg.AttemptTimeout, "attempt-timeout", attestd.DefaultAttemptLimit, "bound of one attempt at one keyd")
}

func newLogger(stderr io.Writer, verbose bool) *slog.Logger {
	level := slog.LevelInfo
	if verbose {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
}

func runServe(args []string, stdout, stderr io.Writer) int {
	var cfg attestd.ServeConfig
	fs := flag.NewFlagSet("attestd serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, serveUsage); fs.PrintDefaults() }
	joinFlags(fs, &cfg.Config)
	fs.StringVar(&cfg.Socket, "socket", attestd.DefaultSocket, "unix socket of the peer-set proxy (mode 0600)")
	fs.StringVar(&cfg.AttestListen, "attest-listen", fmt.Sprintf(":%d", attestd.DefaultAttestPort), `attestation endpoint ([host]:port, "-": none)`)
	fs.IntVar(&cfg.MaxAttestations, "max-attestations", attestd.DefaultMaxAttestations, "attestation handshakes at once")
	fs.DurationVar(&cfg.AttestTimeout, "attest-timeout", attestd.DefaultAttestTimeout, "bound of one attestation handshake")
	verbose := fs.Bool("v", false, "debug logging")
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return attestd.ExitAdmitted
		}
		return attestd.ExitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "attestd serve: unexpected arguments %q\n", fs.Args())
		return attestd.ExitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := attestd.Serve(ctx, cfg, attestd.Deps{Console: stdout}, newLogger(stderr, *verbose)); err != nil {
		fmt.Fprintf(stdout, "attestd: serve failed: %v\n", err)
		return attestd.ExitConfig
	}
	return attestd.ExitAdmitted
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "serve" {
		return runServe(args[1:], stdout, stderr)
	}
	var cfg attestd.Config
	fs := flag.NewFlagSet("attestd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage); fs.PrintDefaults() }
	joinFlags(fs, &cfg)
	fs.DurationVar(&cfg.Deadline, "deadline", attestd.DefaultDeadline, "give up when no keyd admitted this node by then")
	fs.DurationVar(&cfg.BackoffMin, "backoff-min", attestd.DefaultBackoffMin, "first pause between rounds over the hints")
	fs.DurationVar(&cfg.BackoffMax, "backoff-max", attestd.DefaultBackoffMax, "longest pause between rounds")
	fs.StringVar(&cfg.Disk.Mode, "state-disk", "auto", "auto: find, format or open the state disk; off: touch no disk")
	fs.StringVar(&cfg.Disk.MountPoint, "mount", "/var", "where the state volume is mounted")
	fs.BoolVar(&cfg.Disk.Integrity, "disk-integrity", false, "format with dm-integrity (hmac-sha256) and require it at open")
	fs.BoolVar(&cfg.Disk.WithoutRecoverySlot, "disk-without-recovery-slot", false, "format without the owner's recovery keyslot (for a keyd too old to send a recovery key; logged as an error)")
	verbose := fs.Bool("v", false, "debug logging")
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return attestd.ExitAdmitted
		}
		return attestd.ExitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "attestd: unexpected arguments %q\n", fs.Args())
		return attestd.ExitUsage
	}
	log := newLogger(stderr, *verbose)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	adm, err := attestd.Run(ctx, cfg, attestd.Deps{Console: stdout}, log)
	if err != nil {
		fmt.Fprintf(stdout, "attestd: failed: %v\n", err)
		return attestd.ExitCode(err)
	}
	// The state disk step has used the keys; nothing else needs them.
	adm.Wipe()
	return attestd.ExitAdmitted
}
