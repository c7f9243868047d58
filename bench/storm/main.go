// Command storm simulates a boot storm for bench/storm.sh: many UEFI machines
// doing DHCP (broadcast DORA on one interface) and then fetching their boot
// file over TFTP (RFC 7440) or HTTP. It is a load generator, not a PXE stack.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"flag"
	"fmt"
	"github.com/palisade-cc/palisade/provisioner/pxetest"
	"io"
	"maps"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/palisade-cc/palisade/provisioner/tftp"
)

func main() {
	fs := flag.NewFlagSet("storm", flag.ExitOnError)
	iface := fs.String("iface", "", "interface the clients broadcast on (inside a namespace the caller created)")
	n := fs.Int("clients", 1000, "simulated machines")
	httpEvery := fs.Int("http-every", 2, "every Nth machine boots over UEFI HTTP (0 = all TFTP)")
	spread := fs.Duration("spread", 0, "start the machines evenly over this long (0 = all at once)")
	image := fs.String("image", "", "the image the server hands out, to check size and SHA-256 of what arrives")
	window := fs.Int("window", 16, "TFTP windowsize (RFC 7440)")
	blksize := fs.Int("blksize", 1468, "TFTP blksize (RFC 2348)")
	dhcpTimeout := fs.Duration("dhcp-timeout", 2*time.Second, "first DHCP retransmission timeout (doubles, RFC 2131 §4.1)")
	dhcpTries := fs.Int("dhcp-tries", 5, "DHCP transmissions per message before the machine gives up")
	deadline := fs.Duration("deadline", 5*time.Minute, "the whole storm's time limit")
	report := fs.String("json", "", "write per-machine results as JSON here")
	fs.Parse(os.Args[1:])
	if *iface == "" || *image == "" {
		fmt.Fprintln(os.Stderr, "usage: storm -iface vcli -image uki.efi [-clients 1000] [-http-every 2] [-spread 0]")
		os.Exit(2)
	}
	if err := run(*iface, *n, *httpEvery, *spread, *image, *report, *deadline, fetchOptions{
		DHCPTimeout: *dhcpTimeout, DHCPTries: *dhcpTries,
		TFTP: tftp.ClientOptions{BlockSize: *blksize, WindowSize: *window, TSize: true},
	}); err != nil {
		fmt.Fprintln(os.Stderr, "storm:", err)
		os.Exit(1)
	}
}

func run(iface string, n, httpEvery int, spread time.Duration, image, report string, deadline time.Duration, o fetchOptions) error {
	want, err := os.ReadFile(image)
	if err != nil {
		return err
	}
	wantSum := sha256.Sum256(want)
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	s, err := pxetest.Listen(ctx, iface)
	if err != nil {
		return err
	}
	defer s.Close()
	// Each machine's firmware opens its own connection.
	o.HTTP = &http.Client{Transport: &http.Transport{DisableKeepAlives: true, MaxConnsPerHost: 0}}

	start := time.Now()
	res := storm(ctx, s, n, httpEvery, spread, o)
	total := time.Since(start)

	failures := map[string]int{}
	var ok []time.Duration
	var okDHCP, okTFTP, okHTTP []time.Duration
	retries := 0
	for i := range res {
		r := &res[i]
		retries += r.Retries
		if r.Err == nil && (r.Bytes != int64(len(want)) || r.SHA256 != wantSum) {
			r.Stage, r.Err = "content", fmt.Errorf("%s: got %d bytes sha256 %x, want %d bytes %x", r.File, r.Bytes, r.SHA256, len(want), wantSum)
		}
		if r.Err != nil {
			failures[r.Stage]++
			continue
		}
		ok = append(ok, r.Total)
		okDHCP = append(okDHCP, r.DHCP)
		if r.HTTP {
			okHTTP = append(okHTTP, r.Total-r.DHCP)
		} else {
			okTFTP = append(okTFTP, r.Total-r.DHCP)
		}
	}
	nfail := n - len(ok)
	mode := "all at once"
	if spread > 0 {
		mode = "spread over " + spread.String()
	}
	fmt.Printf("storm: %d machines (%d HTTP boot, rest TFTP blksize %d windowsize %d), %d-byte image, arrivals %s\n",
		n, countHTTP(res), o.TFTP.BlockSize, o.TFTP.WindowSize, len(want), mode)
	fmt.Printf("%-28s %8s %10s %10s %10s %10s\n", "phase (successful machines)", "n", "p50", "p90", "p99", "max")
	row := func(name string, d []time.Duration) {
		fmt.Printf("%-28s %8d %10s %10s %10s %10s\n", name, len(d), pct(d, 50), pct(d, 90), pct(d, 99), pct(d, 100))
	}
	row("DHCP DISCOVER→ACK", okDHCP)
	row("TFTP file (after ACK)", okTFTP)
	row("HTTP file (after ACK)", okHTTP)
	row("DISCOVER→file complete", ok)
	fmt.Printf("DHCP retransmissions: %d\n", retries)
	for _, st := range slices.Sorted(maps.Keys(failures)) {
		fmt.Printf("failures at %-12s %d (first: %v)\n", st+":", failures[st], firstErr(res, st))
	}
	fmt.Printf("STORM clients=%d failures=%d p50=%s p99=%s total=%s\n", n, nfail, pct(ok, 50), pct(ok, 99), total.Round(time.Millisecond))
	if report != "" {
		f, err := os.Create(report)
		if err != nil {
			return err
		}
		defer f.Close()
		return writeJSON(f, res)
	}
	return nil
}

func countHTTP(res []result) int {
	k := 0
	for _, r := range res {
		if r.HTTP {
			k++
		}
	}
	return k
}

func firstErr(res []result, stage string) error {
	for _, r := range res {
		if r.Err != nil && r.Stage == stage {
			return fmt.Errorf("%s: %w", r.MAC, r.Err)
		}
	}
	return nil
}

// pct is the p-th percentile (nearest rank) of d, "-" when empty.
func pct(d []time.Duration, p int) string {
	if len(d) == 0 {
		return "-"
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	if i < 1 {
		i = 1
	}
	return s[i-1].Round(time.Millisecond).String()
}

func writeJSON(w io.Writer, res []result) error {
	type row struct {
		MAC, IP, File, Stage, Err string
		HTTP                      bool
		Bytes                     int64
		SHA256                    string
		DHCPms, TotalMS           float64
		Retries                   int
	}
	rows := make([]row, len(res))
	for i, r := range res {
		rows[i] = row{MAC: r.MAC, File: r.File, Stage: r.Stage, HTTP: r.HTTP, Bytes: r.Bytes,
			SHA256: fmt.Sprintf("%x", r.SHA256), DHCPms: ms(r.DHCP), TotalMS: ms(r.Total), Retries: r.Retries}
		if r.IP.IsValid() {
			rows[i].IP = r.IP.String()
		}
		if r.Err != nil {
			rows[i].Err = strings.TrimSpace(r.Err.Error())
		}
	}
	e := json.NewEncoder(w)
	e.SetIndent("", " ")
	return e.Encode(rows)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
