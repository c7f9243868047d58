// Package cvmport is the guest's end of the CVM emulator's virtio-serial port
// (org.palisade.cvm.0) and the wire codec both ends speak: a Client that asks
// the emulator for SEV-SNP extended reports, TDX quotes and the TDX CC event
// log, and Serve, which answers those requests on the host with a Handler.
//
// This transport exists only for the QEMU harness, whose machines have no
// confidential hardware (ARCHITECTURE §7). On real SEV-SNP or TDX hardware the
// port is absent and attestd uses internal/attest/snp and internal/attest/tdx's
// own transports (configfs-tsm, /dev/sev-guest, /dev/tdx_guest). Nothing here
// is a trust decision: even if a host offered this port to a production guest,
// the reports it returns chain only to the emulator's test roots
// (snptest, tdxtest), which production verifiers never pin — verifiers decide,
// not the transport. *Client satisfies snp.Transport and tdx.Transport, so the
// attester's code path is the hardware path apart from the transport.
//
// Wire format (one request at a time, big-endian framing):
//
//	frame    = "PCVM" ‖ u32 length ‖ payload            (length ≤ a bound per direction)
//	payload  = u8 version (1) ‖ u8 kind ‖ u32 seq ‖ field*
//	field    = u8 tag ‖ u32 length ‖ bytes
//	kind     = op (request) or op|0x80 (response);
//	           op 1 hello, 2 extended report, 3 quote, 4 CC event log
//	tags     = 1 report_data (64 bytes), 2 platform, 3 report, 4 certs,
//	           5 quote, 6 ccel, 7 error
//
// A response echoes its request's seq; the client starts at a random seq and
// drops responses to requests it gave up on. A reader that meets bytes which
// do not start with the magic skips to the next magic (bounded), so a request
// abandoned half-way by a deadline does not wedge the port.
package cvmport
