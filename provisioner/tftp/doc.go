// Package tftp is the provisioner's read-only TFTP server (RFC 1350 with the
// option extensions of RFC 2347/2348/2349 and windowed transfers of RFC 7440).
// It is not a general file server: it never accepts writes and serves only
// regular files beneath one root directory.
//
// # Why the read path is our own code
//
// github.com/pin/tftp/v3 v3.1.0 cannot be extended to RFC 7440 from outside:
// its sender drops every option other than blksize and tsize before building
// the OACK (so neither "timeout" nor "windowsize" can be acknowledged), its
// packet types and sender are unexported, and its "anticipate" mode sends
// windows without negotiating them, which standard RFC 7440 receivers (atftp,
// UEFI firmware) cannot use. Its request loop also holds one server-wide
// mutex while it opens each transfer socket, and offers no hook before a
// transfer starts where per-client limits could refuse it. So this package
// implements the read path itself (packet.go, transfer.go): option
// negotiation, windows, block-number rollover, retransmission and duplicate
// ACK handling. The library is still used where it fits: its netascii
// encoder converts files requested in netascii mode, and its client is an
// independent interoperability peer in the tests.
//
// # Behaviour worth knowing
//
//   - Write requests are refused with error 2 (access violation).
//   - File names must be relative, without "..", backslashes or control
//     bytes; symlinks are followed only while they stay inside the root
//     (os.Root). Anything else is refused with error 2.
//   - Duplicate or stale ACKs are ignored, never answered with data: a
//     retransmission happens only on timeout (RFC 1123 §4.2.3.1, the
//     Sorcerer's Apprentice fix). An ACK inside the window acknowledges
//     every block up to it and the next window starts after it (RFC 7440 §4).
//   - Block numbers wrap from 65535 to 0, so files larger than
//     65535 × blksize are served (the common de-facto behaviour).
//   - Socket buffers are raised so a full window of the largest blocks fits.
package tftp
