// Command meshd is the node's WireGuard mesh tool: it creates the node's key
// and shows the mesh's state. The daemon itself runs inside the node's boot
// sequence (meshd.Run), on the node's attested session with keyd.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/palisade-cc/palisade/meshd"
)

const usage = `usage: meshd <command> [flags]

commands:
  pubkey --key FILE     create the node's WireGuard key in FILE (mode 0600)
                        if missing, print its public key (the claim keyd lists)
  status [--addr A]     show the peer set and every peer's handshake and bytes
                        from the running meshd (default ` + meshd.DefaultStatusListen + `)

example:
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
