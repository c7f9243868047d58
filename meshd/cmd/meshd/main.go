// Command meshd is the node's WireGuard mesh: `meshd run` is the daemon the
// init starts after `attestd serve`, following keyd's peer set through
// attestd's socket; `pubkey` and `status` are its tools (docs/meshd.md).
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/palisade-cc/palisade/meshd"
)

const usage = `usage: meshd <command> [flags]

commands:
  run [flags]           the daemon: create the WireGuard interface with the key
                        attestd claimed, assign the mesh addresses keyd gave
                        (attestd's admission record), and keep the peers equal
                        to keyd's peer set, followed through attestd's socket;
                        prints "meshd: peer <id> added|removed|updated …" and
                        "meshd: peer <id> handshake" on the console
  pubkey --key FILE     create the node's WireGuard key in FILE (mode 0600)
                        if missing, print its public key (the claim keyd lists)
  status [--addr A]     show the peer set and every peer's handshake and bytes
                        from the running meshd (default ` + meshd.DefaultStatusListen + `)

example:
  meshd run                                   # the image's stage: all defaults
  meshd run --keepalive 25 --mtu 1380
  meshd run --config /etc/palisade/meshd.json # a full meshd.Config (JSON, version 1)
  meshd pubkey --key /run/palisade/wg.key
  meshd status
`

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "meshd:", err)
		os.Exit(1)
	}
}

func run(args []string, out io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(out, usage)
		return nil
	}
	fs := flag.NewFlagSet("meshd "+args[0], flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(fs.Output(), usage) }
	switch args[0] {
	case "run":
		return runDaemon(fs, args[1:], out)
	case "pubkey":
		key := fs.String("key", "", "private key file")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		if *key == "" {
			return fmt.Errorf("pubkey: --key is required")
		}
		k, err := meshd.LoadOrCreateKey(*key)
		if err != nil {
			return err
		}
		fmt.Fprintln(out, k.PublicKey().String())
		return nil
	case "status":
		addr := fs.String("addr", meshd.DefaultStatusListen, "meshd's status address")
		asJSON := fs.Bool("json", false, "print JSON")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		return status(*addr, *asJSON, out)
	default:
		return fmt.Errorf("unknown command %q (see meshd --help)", args[0])
	}
}

// Defaults of `meshd run`: attestd's files in the guest.
const (
	defaultAdmission = "/run/palisade/admission.json"
	defaultSocket    = "/run/palisade/keyd.sock"
	defaultKey       = "/run/palisade/wg.key"
	// defaultKeepalive makes peers handshake without traffic, so a new
	// peer is reachable (and seen to be) at once.
	defaultKeepalive = 5
)

// daemonConfig reads --config if given (strictly) or builds the guest's
// defaults: kernel WireGuard created by meshd, attestd's key file.
func daemonConfig(path string) (meshd.Config, error) {
	if path == "" {
		return meshd.Config{Version: 1, CreateInterface: true, KeyFile: defaultKey, PersistentKeepaliveSeconds: defaultKeepalive}, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return meshd.Config{}, err
	}
	var c meshd.Config
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return meshd.Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

func runDaemon(fs *flag.FlagSet, args []string, out io.Writer) error {
	cfgPath := fs.String("config", "", "meshd.Config as JSON (default: kernel WireGuard, attestd's key, keep-alive 5 s)")
	admission := fs.String("admission", defaultAdmission, "attestd's admission record (node ID, mesh addresses)")
	socket := fs.String("socket", defaultSocket, "attestd's peer-set socket")
	key := fs.String("key", "", "WireGuard private key file, written by attestd (default: the config's key_file, "+defaultKey+")")
	keepalive := fs.Int("keepalive", -1, "persistent keep-alive in seconds for every peer (default: the config's, 5)")
	mtu := fs.Int("mtu", 0, "interface MTU (default: the config's, 1420)")
	port := fs.Int("port", 0, "WireGuard UDP port (default: the config's, 51820; attestd's --wireguard-port must match)")
	verbose := fs.Bool("v", false, "debug logging")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("run: unexpected arguments %q", fs.Args())
	}
	cfg, err := daemonConfig(*cfgPath)
	if err != nil {
		return err
	}
	if *key != "" {
		cfg.KeyFile = *key
	}
	if *keepalive >= 0 {
		cfg.PersistentKeepaliveSeconds = *keepalive
	}
	if *mtu != 0 {
		cfg.MTU = *mtu
	}
	if *port != 0 {
		cfg.ListenPort = *port
	}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return err
	}
	// attestd wrote the key and claimed its public part: a key meshd made
	// up now would be one keyd never listed, and no peer would talk to it.
	if _, err := os.Stat(cfg.KeyFile); err != nil {
		return fmt.Errorf("run: key file: %w (attestd writes it at the join)", err)
	}
	adm, err := meshd.LoadAdmission(*admission)
	if err != nil {
		return err
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})).With("component", "meshd", "node", adm.NodeID)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err = meshd.RunConsole(ctx, cfg, adm.Self, meshd.SocketSource(*socket), log, out)
	if err == nil && ctx.Err() == nil {
		err = errors.New("run: stopped")
	}
	return err
}

func status(addr string, asJSON bool, out io.Writer) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/status", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status: %s: %s", resp.Status, body)
	}
	if asJSON {
		_, err := out.Write(body)
		return err
	}
	var s meshd.Status
	if err := json.Unmarshal(body, &s); err != nil {
		return fmt.Errorf("status: %w", err)
	}
	return meshd.WriteStatus(out, &s, time.Now())
}
