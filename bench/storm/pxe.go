package main

import (
	"context"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/palisade-cc/palisade/provisioner/pxetest"
	"github.com/palisade-cc/palisade/provisioner/tftp"
)

// result is what one client saw.
type result struct {
	MAC     string
	HTTP    bool
	IP      netip.Addr
	File    string
	Bytes   int64
	SHA256  [32]byte
	DHCP    time.Duration // DISCOVER sent → ACK received
	Total   time.Duration // DISCOVER sent → last byte of the file
	Retries int           // DHCP retransmissions
	Stage   string        // where it failed: dhcp-offer, dhcp-ack, boot-answer, tftp, http
	Err     error
}

// fetchOptions are the transfer parameters: blksize 1468 fits one 1500-byte
// packet (RFC 2348), windowsize 16 (RFC 7440) as current UEFI firmware asks.
type fetchOptions struct {
	DHCPTimeout time.Duration // first retransmission timeout
	DHCPTries   int
	TFTP        tftp.ClientOptions
	HTTP        *http.Client
}

// boot runs DORA, then fetches the boot file the ACK names, timing both.
func boot(ctx context.Context, c pxetest.Machine, s *pxetest.Socket, o fetchOptions) (r result) {
	r = result{MAC: c.MAC.String(), HTTP: c.HTTP}
	start := time.Now()
	ack, retries, stage, err := c.DORA(ctx, s, o.DHCPTimeout, o.DHCPTries)
	r.Retries = retries
	if err != nil {
		r.Stage, r.Err = stage, err
		return r
	}
	r.DHCP = time.Since(start)
	r.IP, _ = netip.AddrFromSlice(ack.YourIPAddr.To4())
	f, stage, err := c.Fetch(ctx, ack, o.TFTP, o.HTTP)
	r.File, r.Bytes, r.SHA256 = f.File, f.Bytes, f.SHA256
	r.Stage, r.Err = stage, err
	if stage != "boot-answer" { // a transfer ran, whether or not it finished
		r.Total = time.Since(start)
	}
	return r
}

// storm boots n clients (every httpEvery-th one over HTTP, 0 = none),
// starting them evenly over spread (0 = all at once), at most par at a time
// (0 = no limit).
func storm(ctx context.Context, s *pxetest.Socket, n, httpEvery int, spread time.Duration, o fetchOptions) []result {
	res := make([]result, n)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range n {
		if spread > 0 {
			at := start.Add(spread * time.Duration(i) / time.Duration(n))
			time.Sleep(time.Until(at))
		}
		c := pxetest.NewMachine(i+1, httpEvery > 0 && i%httpEvery == httpEvery-1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			res[i] = boot(ctx, c, s, o)
		}()
	}
	wg.Wait()
	return res
}
