package inventory

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
)

// The hints a node's init reads from DHCP option 224 (the first
// site-specific option, RFC 3942 §4): "keyd=HOST:PORT[,HOST:PORT…]
// cluster=ID". The format and its limits are the init's (initramfs/api,
// ParseDHCPOption); they are restated here, not imported, so the
// provisioner stays independent of the measured code, and a test checks
// that what HintText writes parses there.
const (
	// MaxKeydHints is the most keyd addresses the init takes.
	MaxKeydHints = 16
	// MaxHintText bounds the option's text. Longer than 255 bytes it is
	// split into several option 224 instances (RFC 3396 §5), which the
	// init's DHCP client concatenates; three instances next to the network
	// options still fit one Ethernet frame.
	MaxHintText = 3 * 255
)

// HintText is the value of option 224 for a machine of this profile, or ""
// when the profile has neither keyd hints nor a cluster. Missing parts are
// left out.
func (p *Profile) HintText() string {
	var parts []string
	if len(p.KeydHints) > 0 {
		parts = append(parts, "keyd="+strings.Join(p.KeydHints, ","))
	}
	if p.Cluster != "" {
		parts = append(parts, "cluster="+p.Cluster)
	}
	return strings.Join(parts, " ")
}

// MaxStatusURL is the init's bound of the status hint.
const MaxStatusURL = 200

// StatusURL derives the status hint from the boot HTTP listener's bound
// address and boot.http_base: the bound address when it is concrete, else
// http_base's host with the bound port (a listener on 0.0.0.0 is reached
// at the address clients are told for images). "" when neither names an
// http host.
func StatusURL(bound netip.AddrPort, httpBase string) string {
	if bound.Addr().IsValid() && !bound.Addr().IsUnspecified() {
		return "http://" + bound.String()
	}
	u, err := url.Parse(httpBase)
	if err != nil || u.Scheme != "http" || u.Hostname() == "" || !bound.IsValid() {
		return ""
	}
	s := "http://" + net.JoinHostPort(u.Hostname(), strconv.Itoa(int(bound.Port())))
	if checkStatusURL(s) != nil {
		return ""
	}
	return s
}

// checkStatusURL is the init's rule (initramfs/api.CheckStatusURL) for
// what this provisioner writes: http://HOST:PORT, host an IP or DNS name.
func checkStatusURL(s string) error {
	rest, ok := strings.CutPrefix(s, "http://")
	if !ok || len(s) > MaxStatusURL {
		return fmt.Errorf("%q: want http://HOST:PORT of at most %d bytes", s, MaxStatusURL)
	}
	return checkKeydHint(rest)
}

// validCluster is the init's rule for a cluster ID.
func validCluster(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, c := range []byte(s) {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

// checkKeydHint accepts IP:PORT ([v6]:PORT) or DNSNAME:PORT with a port in
// 1-65535: a subset of what the init accepts, and never a byte that the
// option's syntax uses (space separates hints, "," addresses, "=" keys).
func checkKeydHint(h string) error {
	if h == "" || strings.ContainsFunc(h, func(r rune) bool { return r <= ' ' || r > '~' || r == ',' || r == '=' }) {
		return fmt.Errorf("%q is not host:port (no spaces, commas or \"=\")", h)
	}
	host, port, err := net.SplitHostPort(h)
	if err != nil {
		return fmt.Errorf("%q is not host:port", h)
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return fmt.Errorf("%q: port %q is not in 1-65535", h, port)
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return nil
	}
	if !validDNSName(host) {
		return fmt.Errorf("%q: host %q is neither an IP address nor a DNS name", h, host)
	}
	return nil
}

// validDNSName: labels of 1-63 letters, digits and hyphens, not starting or
// ending with a hyphen, 253 bytes at most (RFC 1123 §2.1).
func validDNSName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for l := range strings.SplitSeq(strings.TrimSuffix(s, "."), ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for _, c := range []byte(l) {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}
