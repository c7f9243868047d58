// Command keyd is Palisade's attested key broker; see docs/keyd.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/palisade-cc/palisade/keyd"
)

const usage = `usage: keyd --config /etc/palisade/keyd.json
       keyd node [flags]   (the control-plane image's stage; keyd node -h)

keyd admits attested nodes over mutual aTLS, hands them disk keys, mesh
addresses and the peer set, and logs every decision to a Merkle log.
SIGHUP reloads the manifest (never to a lower security version). The
manifest is the signed bundle of "images sign", checked against
manifest_keys; manifest_without_log_proof is required until keyd verifies
transparency-log proofs, and is logged at error level on every load.

Example configuration (docs/keyd.md lists every field):

  {"version": 1, "cluster_id": "prod-1", "node_id": "cp-0", "profile": "snp-keyd",
   "listen": "0.0.0.0:7443", "metrics_listen": "127.0.0.1:9443",
   "state_path": "/var/lib/palisade/keyd/state.db",
   "manifest_path": "/etc/palisade/manifest.json",
   "manifest_keys": ["/etc/palisade/manifest.pub.pem"],
   "manifest_without_log_proof": true,
   "log_key_file": "/var/lib/palisade/keyd/log.key",
   "attester": {"platform": "sev-snp"},
   "roots": {"sev_snp": {"Milan": {"vcek_chain": "/etc/palisade/amd/Milan.pem"}},
             "sev_snp_collateral_dir": "/var/lib/palisade/snp-collateral"}}

flags:
`

func main() {
	if len(os.Args) > 1 && os.Args[1] == "node" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		code := nodeMain(ctx, os.Args[2:])
		stop()
		os.Exit(code)
	}
	fs := flag.NewFlagSet("keyd", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(fs.Output(), usage); fs.PrintDefaults() }
	path := fs.String("config", "/etc/palisade/keyd.json", "configuration file (JSON)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		if err == flag.ErrHelp {
			os.Exit(0)
		}
		os.Exit(2)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	cfg, err := keyd.LoadConfig(*path)
	if err != nil {
		logger.Error("config", "err", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := keyd.Run(ctx, cfg, logger); err != nil {
		logger.Error("keyd", "err", err)
		os.Exit(1)
	}
}
