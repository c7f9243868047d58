package dhcp

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

func seedPackets(t testing.TB) [][]byte {
	t.Helper()
	ip := []byte{10, 0, 0, 100}
	var out [][]byte
	for _, m := range []*dhcpv4.DHCPv4{
		msg(t, dhcpv4.MessageTypeDiscover, "02:00:00:00:00:01", withArch(7), withVendor("PXEClient:Arch:00007"), withUUID(), withUserClass("iPXE")),
		msg(t, dhcpv4.MessageTypeRequest, "02:00:00:00:00:01", dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ip)), dhcpv4.WithOption(dhcpv4.OptServerIdentifier([]byte{10, 0, 0, 254}))),
		msg(t, dhcpv4.MessageTypeRequest, "02:00:00:00:00:01", dhcpv4.WithClientIP(ip)),
		msg(t, dhcpv4.MessageTypeRelease, "02:00:00:00:00:01", dhcpv4.WithClientIP(ip)),
		msg(t, dhcpv4.MessageTypeDecline, "02:00:00:00:00:01", dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ip))),
		msg(t, dhcpv4.MessageTypeInform, "02:00:00:00:00:01", dhcpv4.WithClientIP(ip)),
		msg(t, dhcpv4.MessageTypeDiscover, "02:00:00:00:00:02", withVendor("HTTPClient:Arch:00016"), withArch(16)),
		msg(t, dhcpv4.MessageTypeDiscover, "02:00:00:00:00:03", askHints()...),
		msg(t, dhcpv4.MessageTypeRequest, "02:00:00:00:00:01", append(askHints(), dhcpv4.WithClientIP(ip))...),
	} {
		b := m.ToBytes()
		out = append(out, b)
		r := m.ToBytes()
		copy(r[24:28], []byte{10, 0, 0, 1}) // relayed
		out = append(out, r)
	}
	return out
}

// FuzzHandle feeds arbitrary datagrams to the request handler in both modes:
// it must never panic, and whatever it sends must be a well-formed BOOTREPLY
// for the same transaction.
func FuzzHandle(f *testing.F) {
	for _, b := range seedPackets(f) {
		f.Add(b, false)
		f.Add(b, true)
	}
	f.Add([]byte{1, 1, 6, 0}, false)
	// One server per mode for the whole run: state carries over between
	// inputs, as it does in production. fsync is off here, only here: the
	// fuzzer looks for crashes, and durability has its own tests.
	p := &recordingPolicy{boots: map[string]Boot{
		"02:00:00:00:00:01": {TFTPFile: "x.efi", HTTPURL: "http://h/x", Hints: bytes.Repeat([]byte("h"), 600)},
		"02:00:00:00:00:02": {HTTPURL: "http://h/y"},
		"02:00:00:00:00:03": {Hints: []byte(testHints)},
	}}
	auth := newHarness(f, authConfig(f), p)
	auth.s.store.db.NoSync = true
	prox := newHarness(f, proxyConfig(), p)
	f.Fuzz(func(t *testing.T, b []byte, proxy bool) {
		h := auth
		if proxy {
			h = prox
		}
		h.t = t
		for _, l := range []*listener{h.relay, h.local, h.pxe} {
			h.s.handle(t.Context(), l, b, netip.MustParseAddrPort("10.0.0.1:67"))
		}
		h.barrier()
		for _, l := range []*listener{h.relay, h.local, h.pxe} {
			conn := l.conn.(*fakeConn)
			for len(conn.out) > 0 {
				out := <-conn.out
				r, err := dhcpv4.FromBytes(out.b)
				if err != nil {
					t.Fatalf("unparsable reply: %v", err)
				}
				if r.OpCode != dhcpv4.OpcodeBootReply || !bytes.Equal(r.TransactionID[:], b[4:8]) {
					t.Fatalf("reply op %v xid %v for request xid %x", r.OpCode, r.TransactionID, b[4:8])
				}
				if r.Options.Has(dhcpv4.GenericOptionCode(OptionHints)) {
					// Hints only when asked, and within the client's limit.
					m, _ := dhcpv4.FromBytes(b)
					limit := 576
					if v, err := m.MaxMessageSize(); err == nil && int(v) > limit {
						limit = int(v)
					}
					if proxy || !bytes.Contains(m.Options.Get(dhcpv4.OptionParameterRequestList), []byte{OptionHints}) || len(out.b)+28 > limit {
						t.Fatalf("option 224 sent: proxy %v, request list %v, %d bytes for limit %d", proxy, m.ParameterRequestList(), len(out.b), limit)
					}
				}
			}
		}
	})
}

// FuzzOptions checks the option pre-scan against the library parser on
// arbitrary option areas, and the client view built from them.
func FuzzOptions(f *testing.F) {
	for _, b := range seedPackets(f) {
		f.Add(b[240:])
	}
	f.Add([]byte{0, 0, 255})
	f.Add([]byte{77, 5, 4, 'i', 'P', 'X', 'E', 255})
	f.Add([]byte{97, 17, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 93, 1, 7, 255})
	f.Fuzz(func(t *testing.T, opts []byte) {
		n, reason := scanOptions(opts)
		if n > maxOptions+1 {
			t.Fatalf("scan counted %d options past the limit", n)
		}
		o := dhcpv4.Options{}
		err := o.FromBytes(opts)
		if reason == "" && err != nil {
			t.Fatalf("pre-scan accepted options the parser rejects: %v", err)
		}
		if reason != "" {
			return
		}
		m := &dhcpv4.DHCPv4{Options: o}
		c := clientOf(m)
		if c.UUID != nil && len(c.UUID) != 16 {
			t.Fatalf("UUID of %d bytes", len(c.UUID))
		}
		if c.PXE && c.HTTPBoot {
			t.Fatal("client both PXE and HTTP boot")
		}
	})
}

// FuzzLeaseRecord: the lease file is ours, but a damaged one must be
// refused record by record, never crash the start, and what decodes must
// encode back to the same bytes.
func FuzzLeaseRecord(f *testing.F) {
	f.Add([]byte{10, 0, 0, 1}, encodeLease(&lease{state: stateBound, mac: "\x02\x00\x00\x00\x00\x01", expiry: 1}))
	f.Add([]byte{10, 0, 0, 2}, encodeLease(&lease{state: stateDeclined, expiry: 5}))
	f.Add([]byte{1}, []byte{1, 2})
	f.Fuzz(func(t *testing.T, k, v []byte) {
		l, err := decodeLease(k, v)
		if err != nil {
			return
		}
		if got := encodeLease(l); !bytes.Equal(got, v) {
			t.Fatalf("re-encoded %x, stored %x", got, v)
		}
	})
}
