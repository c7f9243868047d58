package attestd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/palisade-cc/palisade/attestd/disk"
	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/diskkey"
	"github.com/palisade-cc/palisade/internal/manifest"
	"github.com/palisade-cc/palisade/keyd/api"
)

// Exit codes of the attestd command (docs/attestd.md).
const (
	ExitAdmitted  = 0
	ExitConfig    = 1 // unreadable roots, key or hints; no platform; local failure
	ExitUsage     = 2 // bad flags
	ExitDenied    = 3 // a verified keyd denied this node
	ExitNoProfile = 4 // this machine matches no profile of the signed manifest
	ExitDeadline  = 5 // no keyd verified and admitted the node in time
	// State-disk refusals (docs/attestd.md §Disks).
	ExitDiskForeign = 6 // no state disk; other disks hold data and were not touched
	ExitDiskUUID    = 7 // the disk's LUKS UUID is not the one keyd recorded for this node
	ExitDiskHeader  = 8 // the LUKS2 header was altered, or keyd's key does not open it
)

// ExitCode maps Run's error to the command's exit code.
func ExitCode(err error) int {
	switch {
	case err == nil:
		return ExitAdmitted
	case errors.Is(err, disk.ErrForeign):
		return ExitDiskForeign
	case errors.Is(err, disk.ErrUUIDMismatch):
		return ExitDiskUUID
	case errors.Is(err, disk.ErrHeaderAltered), errors.Is(err, disk.ErrKeyRejected):
		return ExitDiskHeader
	case errors.Is(err, ErrDenied):
		return ExitDenied
	case errors.Is(err, ErrNoProfile):
		return ExitNoProfile
	case errors.Is(err, ErrDeadline):
		return ExitDeadline
	}
	return ExitConfig
}

// Deps are attestd's dependencies; the zero value is production.
type Deps struct {
	// Detect finds the machine's platform; nil: NewProbe().Detect.
	Detect func(ctx context.Context, cfg *Config, log *slog.Logger) (*Machine, error)
	// NodeID returns the node's identity; nil: NodeID from SMBIOS or MAC.
	NodeID func() (string, error)
	// DiskUUIDs returns the LUKS UUIDs to claim; nil claims none (the
	// state-disk step plugs in here).
	DiskUUIDs func(ctx context.Context) ([]string, error)
	// Endpoints returns the node's WireGuard endpoints at port; nil:
	// Endpoints over this machine's interfaces.
	Endpoints func(port int) ([]string, error)
	// Console receives the lines the boot console shows; nil: discard.
	Console io.Writer
	// Now and Sleep are the clock; nil: time.Now and a timer.
	Now   func() time.Time
	Sleep func(ctx context.Context, d time.Duration) error
	// Jitter returns a value in [0, n); nil: math/rand/v2.
	Jitter func(n int64) int64
	// Disk are the state-disk step's dependencies (zero: production; a
	// nil Disk.Console is Console).
	Disk disk.Deps
	// StatusClient posts the status reports to the provisioner (the
	// hints' status URL); nil: a client without proxy or redirects.
	StatusClient *http.Client
}

func (d *Deps) defaults() {
	if d.Detect == nil {
		d.Detect = NewProbe().Detect
	}
	if d.NodeID == nil {
		d.NodeID = func() (string, error) { return NodeID(readSmall, net.Interfaces) }
	}
	if d.Endpoints == nil {
		d.Endpoints = func(port int) ([]string, error) { return Endpoints(net.Interfaces, interfaceAddrs, port) }
	}
	if d.Console == nil {
		d.Console = io.Discard
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.Sleep == nil {
		d.Sleep = func(ctx context.Context, dur time.Duration) error {
			t := time.NewTimer(dur)
			defer t.Stop()
			select {
			case <-t.C:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	if d.Jitter == nil {
		d.Jitter = rand.Int64N
	}
	if d.Disk.Console == nil {
		d.Disk.Console = d.Console
	}
	if d.StatusClient == nil {
		d.StatusClient = newStatusClient()
	}
}

// Admission is what keyd admitted the node with. DiskKeys are secret: the
// caller uses them and calls Wipe; they are never written or printed.
type Admission struct {
	Record
	DiskKeys []api.DiskKey
	// Kube is the node's kubeadm join material, if keyd issued it.
	Kube *api.KubeJoin
}

// Wipe zeroes the disk keys and the owner's recovery keys in place.
func (a *Admission) Wipe() {
	wipeKeys(a.DiskKeys)
	a.DiskKeys = nil
}

func wipeKeys(ks []api.DiskKey) {
	for i := range ks {
		clear(ks[i].Key)
		clear(ks[i].Recovery)
	}
}

// Record is the non-secret part of an admission, written to
// RunDir/admission.json for the stages that follow (meshd's address,
// `attestd serve`'s claims).
type Record struct {
	NodeID        string `json:"node_id"`
	Cluster       string `json:"cluster"`
	Profile       string `json:"profile"`
	Platform      string `json:"platform"`
	Keyd          string `json:"keyd"`
	MeshAddress   string `json:"mesh_address"`
	MeshIPv4      string `json:"mesh_ipv4,omitempty"`
	PeersRevision uint64 `json:"peers_revision"`
	LogIndex      uint64 `json:"log_index"`
	// Checkpoint is the signed checkpoint (note format) keyd returned.
	Checkpoint string `json:"checkpoint"`
	// Claims are what the node's evidence committed to at this admission;
	// `attestd serve` attests with the same ones.
	Claims attest.Claims `json:"claims"`
}

// KubeJoinFile (in RunDir, mode 0600) holds the node's kubeadm join
// material when keyd issued it (api.KubeJoin as JSON).
const KubeJoinFile = "kube-join.json"

// Run joins keyd: it reads the pinned state, detects the platform, gets and
// verifies the manifest, picks the profile, and admits over aTLS, retrying
// the hints with back-off until cfg.Deadline. It writes the record to
// RunDir/admission.json and returns the admission, disk keys included.
//
// With cfg.Disk.Mode auto it also runs the state-disk step: the disk is
// found (and, if blank, partitioned) before the join so its LUKS UUID is
// claimed, and formatted or opened and mounted after the admission, with
// keyd's key (and, at format, the owner's recovery passphrase), which are
// then wiped (the returned admission holds none).
//
// When the hints name the provisioner's status URL, Run reports its
// progress there, best effort and never blocking the boot: booting at the
// start, attested after the admission, unlocked after the disk step, or
// failed with ExitClass of the error.
func Run(ctx context.Context, cfg Config, deps Deps, log *slog.Logger) (*Admission, error) {
	cfg.SetDefaults()
	deps.defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	hb, herr := readSmall(cfg.HintsPath)
	var st *reporter
	if herr == nil {
		st = startReporter(statusURL(hb, log), deps.StatusClient, StatusTimeout, StatusTimeout, log)
	}
	defer st.close()
	st.report(StatusBooting, "", "attestd started")
	adm, err := run(ctx, cfg, deps, log, hb, herr, st)
	if err != nil {
		st.report(StatusFailed, ExitClass(err), failDetail(err))
	}
	return adm, err
}

func run(ctx context.Context, cfg Config, deps Deps, log *slog.Logger, hb []byte, herr error, st *reporter) (*Admission, error) {
	pinned, verifiers, err := loadPinned(&cfg)
	if err != nil {
		return nil, err
	}
	if herr != nil {
		return nil, fmt.Errorf("hints: %w", herr)
	}
	hints, err := ParseHints(hb)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", cfg.HintsPath, err)
	}
	log.Info("hints (untrusted)", "keyd", strings.Join(hints.Keyd, ","), "cluster", hints.Cluster)

	mach, err := deps.Detect(ctx, &cfg, log)
	if err != nil {
		return nil, fmt.Errorf("detect platform: %w", err)
	}
	defer mach.Close()
	log.Info("platform", "platform", mach.Platform, "why", mach.Why)

	nodeID, err := deps.NodeID()
	if err != nil {
		return nil, err
	}
	wg, err := newWireGuardKey(cfg.WireGuardKeyPath)
	if err != nil {
		return nil, err
	}
	pub := wg.PublicKey()
	eps, err := deps.Endpoints(cfg.WireGuardPort)
	if err != nil {
		return nil, err
	}
	if len(eps) == 0 {
		log.Warn("no endpoint to claim: no up interface with a MAC has a global address; peers must wait for this node to reach them")
	}
	claims := attest.Claims{NodeID: nodeID, Role: attest.RoleNode, WireGuardKey: pub[:], Endpoints: eps}
	var step *disk.Step
	var sd *disk.Disk
	if cfg.Disk.Mode == disk.ModeAuto {
		if step, err = disk.New(cfg.Disk, deps.Disk, log); err != nil {
			return nil, err
		}
		if sd, err = step.Prepare(ctx); err != nil {
			return nil, fmt.Errorf("state disk: %w", err)
		}
		if sd != nil {
			claims.DiskUUIDs = []string{sd.UUID}
		}
	} else if deps.DiskUUIDs != nil {
		if claims.DiskUUIDs, err = deps.DiskUUIDs(ctx); err != nil {
			return nil, fmt.Errorf("disk uuids: %w", err)
		}
	}

	j := &joiner{cfg: &cfg, deps: &deps, log: log, pinned: pinned, verifiers: verifiers, cluster: hints.Cluster,
		hints: hints.Keyd, mach: mach, claims: claims}
	adm, err := j.run(ctx)
	if err != nil {
		if sd != nil && errors.Is(err, ErrDenied) {
			return nil, j.diskDenial(ctx, step, sd, err)
		}
		return nil, err
	}
	rb, err := json.MarshalIndent(adm.Record, "", "  ")
	if err != nil {
		adm.Wipe()
		return nil, err
	}
	path := filepath.Join(cfg.RunDir, "admission.json")
	if err := writeFileAtomic(path, append(rb, '\n'), 0o600); err != nil {
		adm.Wipe()
		return nil, fmt.Errorf("admission record %s: %w", path, err)
	}
	if adm.Kube != nil {
		// The bootstrap token is a secret for its minutes: 0600, and never
		// in admission.json or on the console. An image that carries a
		// kubelet turns it into kubeadm's JoinConfiguration
		// (internal/kubeconf.JoinConfig); this image has none (docs/kubeadm.md).
		kb, err := json.Marshal(adm.Kube)
		if err == nil {
			err = writeFileAtomic(filepath.Join(cfg.RunDir, KubeJoinFile), append(kb, '\n'), 0o600)
		}
		if err != nil {
			adm.Wipe()
			return nil, fmt.Errorf("kubeadm join material: %w", err)
		}
	}
	fmt.Fprintf(deps.Console, "attestd: admitted node=%s profile=%s platform=%s keyd=%s log_index=%d\n",
		adm.NodeID, adm.Profile, adm.Platform, adm.Keyd, adm.LogIndex)
	facts := fmt.Sprintf("profile=%s platform=%s keyd=%s log_index=%d", adm.Profile, adm.Platform, adm.Keyd, adm.LogIndex)
	if sd == nil && cfg.Disk.Mode == disk.ModeAuto {
		facts += " diskless"
	}
	st.report(StatusAttested, "", facts)
	if sd == nil {
		return adm, nil
	}
	err = unlockDisk(ctx, step, sd, adm)
	adm.Wipe()
	if err != nil {
		return nil, fmt.Errorf("state disk: %w", err)
	}
	st.report(StatusUnlocked, "", fmt.Sprintf("uuid=%s mounted %s", sd.UUID, cfg.Disk.MountPoint))
	return adm, nil
}

// unlockDisk formats or opens the state disk with keyd's key for its UUID.
// A first format also adds the owner's recovery keyslot: keyd's recovery
// key for the UUID, as the passphrase text the owner types
// (internal/diskkey.Passphrase; `verifier disk-recovery-key` prints the
// same). Without one (a keyd that predates it) formatting needs
// cfg.Disk.WithoutRecoverySlot; opening an in-use disk never does.
func unlockDisk(ctx context.Context, step *disk.Step, sd *disk.Disk, adm *Admission) error {
	for _, k := range adm.DiskKeys {
		if k.UUID != sd.UUID {
			continue
		}
		var pass []byte
		if len(k.Recovery) > 0 {
			var err error
			if pass, err = diskkey.Passphrase(k.Recovery); err != nil {
				return step.Refuse(sd.Partition, fmt.Errorf("keyd's recovery key for uuid=%s: %w", sd.UUID, err))
			}
			defer clear(pass)
		}
		return step.Unlock(ctx, sd, disk.Keys{Disk: k.Key, Recovery: pass})
	}
	return step.Refuse(sd.Partition, fmt.Errorf("%w: keyd returned no key for uuid=%s", disk.ErrUUIDMismatch, sd.UUID))
}

// diskDenial tells a denial caused by the disk apart from one of the node.
// keyd denies the whole admission when a node claims a LUKS UUID other
// than the one it recorded for it (a swapped disk), and says no more on
// the wire. So the node asks the keyd that denied it once more, claiming
// no disk: admitted then, the disk was the reason; the disk stays locked
// either way and the admission is dropped.
func (j *joiner) diskDenial(ctx context.Context, step *disk.Step, sd *disk.Disk, denial error) error {
	j.claims.DiskUUIDs = nil
	adm, err := j.try(ctx, j.deniedBy)
	if err == nil {
		adm.Wipe()
		j.log.Error("keyd admits this node without its disk: the disk's LUKS UUID is not the one keyd recorded",
			"keyd", j.deniedBy, "uuid", sd.UUID, "partition", sd.Partition)
		return step.Refuse(sd.Partition, fmt.Errorf("%w: uuid=%s (the owner re-enrols a replaced disk)", disk.ErrUUIDMismatch, sd.UUID))
	}
	j.log.Info("keyd denies this node with or without its disk", "keyd", j.deniedBy, "err", err)
	step.Refuse(sd.Partition, fmt.Errorf("keyd denied this node; uuid=%s left locked", sd.UUID))
	return denial
}

type joiner struct {
	cfg       *Config
	deps      *Deps
	log       *slog.Logger
	pinned    *pinnedManifest
	verifiers map[attest.Platform]attest.Verifier
	cluster   string
	hints     []string
	mach      *Machine
	claims    attest.Claims

	man     *manifest.Manifest
	profile *attest.Reference
	// deniedBy is the keyd whose denial was final.
	deniedBy string
}

// run tries every hint in order, then pauses (doubling from BackoffMin to
// BackoffMax, with jitter of up to half the pause, so a rack that boots
// at once does not retry in step) and tries again until the deadline.
func (j *joiner) run(ctx context.Context) (*Admission, error) {
	start := j.deps.Now()
	deadline := start.Add(j.cfg.Deadline)
	ctx, cancel := context.WithTimeout(ctx, j.cfg.Deadline)
	defer cancel()
	pause := j.cfg.BackoffMin
	var last error
	for round := 1; ; round++ {
		for _, addr := range j.hints {
			adm, err := j.try(ctx, addr)
			if err == nil {
				return adm, nil
			}
			if errors.Is(err, ErrDenied) {
				j.deniedBy = addr
				fmt.Fprintf(j.deps.Console, "attestd: denied by keyd %s\n", addr)
				return nil, err
			}
			if errors.Is(err, ErrNoProfile) {
				fmt.Fprintf(j.deps.Console, "attestd: %v\n", err)
				return nil, err
			}
			if ctx.Err() != nil && last != nil {
				// The deadline cut this attempt short: the last whole
				// attempt's reason is the one worth reporting.
				j.log.Warn("keyd attempt cut short by the deadline", "keyd", addr, "round", round, "err", err)
				break
			}
			last = fmt.Errorf("keyd %s: %w", addr, err)
			j.log.Warn("keyd attempt failed", "keyd", addr, "round", round, "err", err)
		}
		sleep := pause/2 + time.Duration(j.deps.Jitter(int64(pause/2)+1))
		left := deadline.Sub(j.deps.Now())
		if sleep >= left || ctx.Err() != nil {
			fmt.Fprintf(j.deps.Console, "attestd: giving up after %d rounds: %v\n", round, last)
			return nil, fmt.Errorf("%w (%s, %d rounds over %d hints): last: %w", ErrDeadline, j.cfg.Deadline, round, len(j.hints), last)
		}
		fmt.Fprintf(j.deps.Console, "attestd: no keyd admitted this node (round %d: %v); retrying in %s, %s left\n",
			round, last, sleep.Round(time.Millisecond), left.Round(time.Second))
		if err := j.deps.Sleep(ctx, sleep); err != nil {
			return nil, fmt.Errorf("%w (%s): last: %w", ErrDeadline, j.cfg.Deadline, last)
		}
		pause = min(2*pause, j.cfg.BackoffMax)
	}
}

// try makes one attempt at addr: the manifest first if none verified yet,
// then the admission.
func (j *joiner) try(ctx context.Context, addr string) (*Admission, error) {
	ctx, cancel := context.WithTimeout(ctx, j.cfg.AttemptTimeout)
	defer cancel()
	if j.man == nil {
		b, err := fetchManifest(ctx, addr, j.cluster, j.claims, j.cfg.AttemptTimeout)
		if err != nil {
			return nil, fmt.Errorf("fetch manifest: %w", err)
		}
		res, err := verifyManifest(b, j.pinned)
		if err != nil {
			j.log.Error("manifest from keyd refused", "keyd", addr, "err", err)
			return nil, err
		}
		if res.Log != manifest.LogVerified {
			j.log.Error("MANIFEST ACCEPTED WITHOUT A TRANSPARENCY-LOG PROOF: --manifest-without-log-proof is set (test images only)",
				"keyd", addr, "log", string(res.Log), "key_id", res.KeyID, "image_version", res.Manifest.ImageVersion)
			fmt.Fprintf(j.deps.Console, "attestd: WARNING: manifest accepted without a transparency-log proof\n")
		}
		ref, err := PickProfile(ctx, res.Manifest, j.mach, j.log)
		if errors.Is(err, ErrNoProfile) && ref != nil {
			// Not a reason to stay silent: keyd judges, and its log and
			// metrics then show this machine's attempt.
			fmt.Fprintf(j.deps.Console, "attestd: %v; asking keyd with profile %s, which will deny this node\n", err, ref.Profile)
		} else if err != nil {
			return nil, err
		}
		j.man, j.profile = res.Manifest, ref
		j.claims.Profile = ref.Profile
		if err := j.claims.Validate(); err != nil {
			return nil, fmt.Errorf("claims: %w", err)
		}
		j.log.Info("manifest verified", "keyd", addr, "image_version", res.Manifest.ImageVersion,
			"security_version", res.Manifest.SecurityVersion, "key_id", res.KeyID, "log", string(res.Log))
		fmt.Fprintf(j.deps.Console, "attestd: evidence platform=%s profile=%s\n", j.mach.Platform, ref.Profile)
	}
	var verified atomic.Bool
	resp, err := admit(ctx, addr, joinConfig(j.cluster, j.claims, j.mach, j.verifiers, j.man, j.cfg.AttemptTimeout, &verified), &verified)
	if err != nil {
		return nil, err
	}
	if resp.NodeID != j.claims.NodeID {
		wipeKeys(resp.DiskKeys)
		return nil, fmt.Errorf("keyd admitted node %q, want %q", resp.NodeID, j.claims.NodeID)
	}
	return &Admission{DiskKeys: resp.DiskKeys, Kube: resp.Kube, Record: Record{NodeID: resp.NodeID, Cluster: j.cluster, Profile: j.profile.Profile,
		Platform: string(j.mach.Platform), Keyd: addr, MeshAddress: resp.MeshAddress, MeshIPv4: resp.MeshIPv4,
		PeersRevision: resp.PeersRevision, LogIndex: resp.LogIndex, Checkpoint: string(resp.Checkpoint), Claims: j.claims}}, nil
}
