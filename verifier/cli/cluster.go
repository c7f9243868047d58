package cli

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"slices"
	"strconv"
	"sync"
	"text/tabwriter"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/palisade-cc/palisade/internal/atls"
	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/keyd/api"
	"github.com/palisade-cc/palisade/verifier/config"
	"github.com/palisade-cc/palisade/verifier/logcheck"
)

// Node statuses in a cluster report.
const (
	StatusOK          = "ok"          // in the log, attested live, evidence matches its admission
	StatusRevoked     = "revoked"     // revoked by the owner; not attested
	StatusUnreachable = "unreachable" // admitted, but no attestation answered
	StatusDenied      = "denied"      // attestation failed or differs from the admission
	StatusLog         = "log"         // the registry and the log disagree about this node
)

// NodeReport is one node's line.
type NodeReport struct {
	NodeID     string `json:"node_id"`
	Status     string `json:"status"`
	Detail     string `json:"detail,omitempty"`
	Platform   string `json:"platform,omitempty"`
	Profile    string `json:"profile,omitempty"`
	HardwareID string `json:"hardware_id,omitempty"`
	TCB        string `json:"tcb,omitempty"`
	LogIndex   uint64 `json:"log_index"`
	Address    string `json:"address,omitempty"`
}

// Report is the outcome of `verifier cluster`.
type Report struct {
	Keyd         string       `json:"keyd"`
	KeydVerified bool         `json:"keyd_verified"`
	LogSize      int64        `json:"log_size"`
	LogRoot      string       `json:"log_root"`
	PreviousSize int64        `json:"previous_size"`
	Nodes        []NodeReport `json:"nodes"`
	Problems     []string     `json:"problems,omitempty"`
	Exit         int          `json:"exit"`
}

// worse keeps the most serious exit code: a lying log outranks a denied
// node, which outranks an unreachable one.
func worse(a, b int) int {
	rank := map[int]int{ExitOK: 0, ExitUnreachable: 1, ExitError: 2, ExitDenied: 3, ExitLog: 4}
	if rank[b] > rank[a] {
		return b
	}
	return a
}

func (r *Report) problem(code int, format string, a ...any) {
	r.Problems = append(r.Problems, fmt.Sprintf(format, a...))
	r.Exit = worse(r.Exit, code)
}

func cmdCluster() *command {
	var asJSON bool
	return &command{
		name: "cluster", usage: "cluster [ADDR]",
		help:    "Check the whole cluster: attest keyd at ADDR (default: the config's first), verify\nits signed checkpoint, its consistency with the last one this owner saw, every\nrecord of the log, the inclusion of every current node's admission, and attest\nevery current node live (attest_port) in parallel.",
		example: "  verifier cluster 10.0.0.5:7443\n  verifier cluster --json | jq '.nodes[] | select(.status != \"ok\")'",
		flags:   func(fs *flag.FlagSet) { fs.BoolVar(&asJSON, "json", false, "print the report as JSON") },
		run: func(ctx context.Context, e *Env, fs *flag.FlagSet, args []string) error {
			if len(args) > 1 {
				fs.Usage()
				return fail(ExitUsage, "want at most one address")
			}
			c, err := e.load()
			if err != nil {
				return err
			}
			addr := c.Keyd[0]
			if len(args) == 1 {
				addr = args[0]
			}
			rep, err := CheckCluster(ctx, c, addr, e)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(e.Stdout)
				enc.SetIndent("", "  ")
				enc.Encode(rep)
			} else {
				printReport(e.Stdout, rep, *e.Terminal)
			}
			if rep.Exit != ExitOK {
				return &exitError{rep.Exit, fmt.Errorf("%d problem(s); first: %s", len(rep.Problems), rep.Problems[0])}
			}
			return nil
		},
	}
}

// CheckCluster runs the checks of `verifier cluster` against the keyd at
// addr. An error means the check could not run (or keyd could not be
// attested); findings are in the report.
func CheckCluster(ctx context.Context, c *config.Config, addr string, e *Env) (*Report, error) {
	rep := &Report{Keyd: addr}
	cl, err := keydClient(c, addr, e)
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	// Every call below re-attests keyd on a new connection or reuses one
	// that was attested: the first call proves keyd.
	msg, err := cl.Checkpoint(ctx)
	if err != nil {
		return nil, classify("keyd "+addr, err)
	}
	rep.KeydVerified = true
	cp, err := logcheck.Verify(msg, c.LogVerifier())
	if err != nil {
		return nil, &exitError{ExitLog, fmt.Errorf("keyd %s checkpoint: %w", addr, err)}
	}
	rep.LogSize, rep.LogRoot = cp.Size, base64.StdEncoding.EncodeToString(cp.Root[:])
	logOK := true
	logFail := func(format string, a ...any) {
		logOK = false
		rep.problem(ExitLog, format, a...)
	}

	// Consistency with what this owner saw before (RFC 6962 §2.1.2): a
	// keyd that forks or rewrites history cannot prove it.
	old, err := c.LastCheckpoint()
	if err != nil {
		return nil, err
	}
	if old != nil {
		oc, err := logcheck.Verify(old, c.LogVerifier())
		if err != nil {
			return nil, fmt.Errorf("stored checkpoint %s: %w", c.Dir(), err)
		}
		rep.PreviousSize = oc.Size
		var proof tlog.TreeProof
		if oc.Size > 0 && cp.Size > oc.Size {
			p, err := cl.ConsistencyProof(ctx, uint64(oc.Size), uint64(cp.Size))
			if err != nil {
				return nil, classify("consistency proof", err)
			}
			if proof, err = hashes(p); err != nil {
				return nil, &exitError{ExitLog, fmt.Errorf("consistency proof: %w", err)}
			}
		}
		if err := logcheck.Consistent(oc, cp, proof); err != nil {
			logFail("checkpoint: %v", err)
		}
	}

	// Every record, replayed to the checkpoint's root: only then do the
	// admissions and revocations they state count.
	var leaves [][]byte
	for start := int64(0); start < cp.Size; {
		end := min(start+api.MaxLogEntriesPerPage, cp.Size)
		page, err := cl.Entries(ctx, uint64(start), uint64(end))
		if err != nil {
			return nil, classify("log entries", err)
		}
		if page.Start != uint64(start) || len(page.Entries) == 0 || int64(len(page.Entries)) > end-start {
			return nil, &exitError{ExitLog, fmt.Errorf("log entries [%d,%d): keyd answered %d from %d", start, end, len(page.Entries), page.Start)}
		}
		leaves = append(leaves, page.Entries...)
		start += int64(len(page.Entries))
	}
	if err := logcheck.Replay(cp, leaves); err != nil {
		logFail("%v", err)
	}
	records := make([]logcheck.Record, len(leaves))
	lastAdmission := map[string]int64{}
	revokedAt := map[string]int64{}
	for i, l := range leaves {
		r, err := logcheck.ParseRecord(l)
		if err != nil {
			logFail("record %d: %v", i, err)
			continue
		}
		records[i] = r
		switch {
		case r.Type == logcheck.TypeAdmission:
			lastAdmission[r.Node] = int64(i)
		case r.Type == logcheck.TypeRevocation && r.Attrs["event"] == logcheck.EventRevokeNode:
			revokedAt[r.Node] = int64(i)
		}
	}

	nodes, err := cl.Nodes(ctx)
	if err != nil {
		return nil, classify("nodes", err)
	}
	listed := map[string]bool{}
	var current []api.Node
	for _, n := range nodes.Nodes {
		nr := NodeReport{NodeID: n.NodeID, Platform: n.Platform, Profile: n.Profile, HardwareID: n.HardwareID, TCB: n.TCB, LogIndex: n.LogIndex}
		if listed[n.NodeID] {
			logFail("node %s: listed twice", n.NodeID)
			continue
		}
		listed[n.NodeID] = true
		idx := int64(n.LogIndex)
		switch {
		case n.Revoked:
			nr.Status = StatusRevoked
		case revokedAt[n.NodeID] > lastAdmission[n.NodeID] || (revokedAt[n.NodeID] > 0 && lastAdmission[n.NodeID] == 0):
			nr.Status, nr.Detail = StatusLog, fmt.Sprintf("revoked by record %d, listed as current", revokedAt[n.NodeID])
		case n.LogIndex >= uint64(cp.Size):
			nr.Status, nr.Detail = StatusLog, fmt.Sprintf("admission record %d beyond the checkpoint (size %d); if nodes are joining now, run again", idx, cp.Size)
		default:
			p, err := cl.InclusionProof(ctx, n.LogIndex, uint64(cp.Size))
			if err != nil {
				return nil, classify("inclusion proof", err)
			}
			proof, err := hashes(p)
			if err == nil {
				err = logcheck.Included(cp, idx, leaves[idx], proof)
			}
			r := records[idx]
			switch {
			case err != nil:
				nr.Status, nr.Detail = StatusLog, err.Error()
			case r.Type != logcheck.TypeAdmission || r.Node != n.NodeID:
				nr.Status, nr.Detail = StatusLog, fmt.Sprintf("record %d is %s of %q, not this node's admission", idx, r.Type, r.Node)
			case lastAdmission[n.NodeID] != idx:
				nr.Status, nr.Detail = StatusLog, fmt.Sprintf("registry points at record %d, the latest admission is %d", idx, lastAdmission[n.NodeID])
			case r.Profile != n.Profile || r.Platform != n.Platform || r.Attrs["hardware_id"] != n.HardwareID:
				nr.Status, nr.Detail = StatusLog, fmt.Sprintf("record %d admitted profile %q platform %q hardware %q; registry says %q %q %q",
					idx, r.Profile, r.Platform, r.Attrs["hardware_id"], n.Profile, n.Platform, n.HardwareID)
			default:
				current = append(current, n)
			}
		}
		if nr.Status == StatusLog {
			logFail("node %s: %s", n.NodeID, nr.Detail)
		}
		rep.Nodes = append(rep.Nodes, nr)
	}
	// A node the log admitted and never revoked must be listed: a keyd that
	// hides one hides a machine holding cluster secrets.
	for _, id := range slices.Sorted(maps.Keys(lastAdmission)) {
		if !listed[id] && revokedAt[id] < lastAdmission[id] {
			logFail("node %s: admitted by record %d, missing from keyd's node list", id, lastAdmission[id])
			rep.Nodes = append(rep.Nodes, NodeReport{NodeID: id, Status: StatusLog, LogIndex: uint64(lastAdmission[id]),
				Detail: "admitted in the log, omitted by keyd"})
		}
	}

	// Live attestation, bounded in parallel.
	live := attestNodes(ctx, c, current, e)
	for i := range rep.Nodes {
		if r, ok := live[rep.Nodes[i].NodeID]; ok {
			rep.Nodes[i].Status, rep.Nodes[i].Detail, rep.Nodes[i].Address = r.Status, r.Detail, r.Address
			switch r.Status {
			case StatusDenied:
				rep.problem(ExitDenied, "node %s: %s", r.NodeID, r.Detail)
			case StatusUnreachable:
				rep.problem(ExitUnreachable, "node %s: %s", r.NodeID, r.Detail)
			}
		}
	}
	if logOK {
		if err := c.SaveCheckpoint(msg); err != nil {
			return nil, fmt.Errorf("store checkpoint: %w", err)
		}
	}
	return rep, nil
}

func hashes(p *api.Proof) ([]tlog.Hash, error) {
	if len(p.Hashes) > 128 {
		return nil, fmt.Errorf("proof of %d hashes", len(p.Hashes))
	}
	out := make([]tlog.Hash, len(p.Hashes))
	for i, h := range p.Hashes {
		if len(h) != tlog.HashSize {
			return nil, fmt.Errorf("proof hash %d: %d bytes, want %d", i, len(h), tlog.HashSize)
		}
		copy(out[i][:], h)
	}
	return out, nil
}

// attestAddr is where a node answers aTLS: its first claimed endpoint's
// host, at the configured attestation port.
func attestAddr(c *config.Config, n api.Node) (string, error) {
	if c.AttestPort == 0 {
		return "", errors.New("not attested live: attest_port is 0 in the config")
	}
	if len(n.Endpoints) == 0 {
		return "", errors.New("no endpoint claimed")
	}
	host, _, err := net.SplitHostPort(n.Endpoints[0])
	if err != nil {
		return "", fmt.Errorf("endpoint %q: %v", n.Endpoints[0], err)
	}
	return net.JoinHostPort(host, strconv.Itoa(c.AttestPort)), nil
}

func attestNodes(ctx context.Context, c *config.Config, nodes []api.Node, e *Env) map[string]NodeReport {
	out := map[string]NodeReport{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, e.Parallel)
	done := 0
	for _, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			r := attestNode(ctx, c, n)
			mu.Lock()
			defer mu.Unlock()
			out[n.NodeID] = r
			done++
			fmt.Fprintf(e.Stderr, "[%d/%d] %s: %s\n", done, len(nodes), n.NodeID, r.Status)
		}()
	}
	wg.Wait()
	return out
}

// attestNode attests n live and compares what its evidence proves with
// what keyd recorded at its admission: the same chip, profile and
// measurements, or the machine is not the one that was admitted.
func attestNode(ctx context.Context, c *config.Config, n api.Node) NodeReport {
	r := NodeReport{NodeID: n.NodeID}
	addr, err := attestAddr(c, n)
	if err != nil {
		r.Status, r.Detail = StatusUnreachable, err.Error()
		return r
	}
	r.Address = addr
	cfg, err := atlsConfig(c, func(p attest.Claims) error {
		if p.NodeID != n.NodeID || string(p.Role) != n.Role {
			return fmt.Errorf("peer claims node %q role %q, want %q %q", p.NodeID, p.Role, n.NodeID, n.Role)
		}
		return nil
	})
	if err != nil {
		r.Status, r.Detail = StatusDenied, err.Error()
		return r
	}
	conn, err := atls.Dial(ctx, "tcp", addr, cfg)
	if err != nil {
		var oe *net.OpError
		if errors.As(err, &oe) || errors.Is(err, io.EOF) || errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) {
			r.Status, r.Detail = StatusUnreachable, err.Error()
		} else {
			r.Status, r.Detail = StatusDenied, fmt.Sprintf("attestation denied (%s): %v", attest.ClassOf(err), err)
		}
		return r
	}
	defer conn.Close()
	v := conn.PeerVerified()
	switch {
	case v == nil:
		r.Status, r.Detail = StatusDenied, "node was not attested"
	case v.HardwareID != n.HardwareID:
		r.Status, r.Detail = StatusDenied, fmt.Sprintf("hardware %s, admitted as %s", v.HardwareID, n.HardwareID)
	case string(v.Platform) != n.Platform || v.Profile != n.Profile:
		r.Status, r.Detail = StatusDenied, fmt.Sprintf("platform %s profile %s, admitted as %s %s", v.Platform, v.Profile, n.Platform, n.Profile)
	case !maps.Equal(v.Measurements, n.Measurements):
		r.Status, r.Detail = StatusDenied, "measurements differ from the admission"
	default:
		r.Status = StatusOK
	}
	return r
}

func printReport(w io.Writer, r *Report, colour bool) {
	paint := func(s string) string {
		if !colour {
			return s
		}
		switch s {
		case StatusOK:
			return "\x1b[32m" + s + "\x1b[0m"
		case StatusRevoked, StatusUnreachable:
			return "\x1b[33m" + s + "\x1b[0m"
		}
		return "\x1b[31m" + s + "\x1b[0m"
	}
	fmt.Fprintf(w, "keyd %s: attested; log size %d (previously seen %d)\n\n", r.Keyd, r.LogSize, r.PreviousSize)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tSTATUS\tPLATFORM\tPROFILE\tLOG\tDETAIL")
	for _, n := range r.Nodes {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", n.NodeID, paint(n.Status), n.Platform, n.Profile, n.LogIndex, n.Detail)
	}
	tw.Flush()
	for _, p := range r.Problems {
		fmt.Fprintf(w, "problem: %s\n", p)
	}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0 && os.Getenv("NO_COLOR") == ""
}
