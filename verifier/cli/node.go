package cli

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"

	"github.com/palisade-cc/palisade/internal/atls"
	"github.com/palisade-cc/palisade/internal/attest"
)

// NodeResult is what `verifier node` proved about a peer.
type NodeResult struct {
	Address  string           `json:"address"`
	Claims   attest.Claims    `json:"claims"`
	Verified *attest.Verified `json:"verified"`
}

func cmdNode() *command {
	var asJSON bool
	return &command{
		name: "node", usage: "node ADDR",
		help:    "Attest one node or keyd at ADDR over aTLS against the pinned roots and the\nreference of its claimed role and profile; print the verified claims.",
		example: "  verifier node 10.0.0.7:7444\n  verifier node --json 10.0.0.5:7443",
		flags:   func(fs *flag.FlagSet) { fs.BoolVar(&asJSON, "json", false, "print the result as JSON") },
		run: func(ctx context.Context, e *Env, fs *flag.FlagSet, args []string) error {
			if err := nargs(fs, args, 1); err != nil {
				return err
			}
			c, err := e.load()
			if err != nil {
				return err
			}
			// Any role: what it may be is decided by the reference of the
			// role and profile it claims, which its evidence commits to.
			cfg, err := atlsConfig(c, nil)
			if err != nil {
				return err
			}
			conn, err := atls.Dial(ctx, "tcp", args[0], cfg)
			if err != nil {
				if isDenial(err) {
					return fail(ExitDenied, "%s: attestation denied (%s): %v", args[0], attest.ClassOf(err), err)
				}
				return fail(ExitUnreachable, "%s: unreachable: %v", args[0], err)
			}
			defer conn.Close()
			res := NodeResult{Address: args[0], Claims: conn.PeerClaims(), Verified: conn.PeerVerified()}
			if res.Verified == nil {
				return fail(ExitDenied, "%s: not attested", args[0])
			}
			if asJSON {
				enc := json.NewEncoder(e.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(res)
			}
			v := res.Verified
			fmt.Fprintf(e.Stdout, "%s: attested\n  node:      %s\n  role:      %s\n  profile:   %s\n  platform:  %s\n  hardware:  %s\n  tcb:       %s\n",
				args[0], res.Claims.NodeID, res.Claims.Role, v.Profile, v.Platform, v.HardwareID, v.TCB)
			for k, m := range v.Measurements {
				fmt.Fprintf(e.Stdout, "  %-10s %s\n", k+":", m)
			}
			return nil
		},
	}
}
