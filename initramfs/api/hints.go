package api

import (
	"fmt"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// DHCPOptionHints is the DHCPv4 option that carries hints: 224 is the first
// site-specific option (RFC 3942 §4, RFC 2132 §2), so no registered option
// is reused. Its value is the same text as the kernel cmdline parameters,
// without the "palisade." prefix: "keyd=10.0.0.2:7443,10.0.0.3:7443 cluster=c1".
const DHCPOptionHints = 224

// MaxHints bounds the keyd addresses taken from all sources together.
const MaxHints = 16

// MaxStatusURL bounds the status hint.
const MaxStatusURL = 200

// StatusPath is where, below the status hint's URL, a node posts its boot
// status (docs/provisioner.md, "Node status").
const StatusPath = "/node/v1/status"

// Hints are what the provisioner suggests. They are untrusted: a wrong keyd
// address only makes attestd fail to find an attested keyd, because attestd
// verifies keyd's evidence against the manifest before sending anything.
type Hints struct {
	Keyd    []string `json:"keyd,omitempty"`
	Cluster string   `json:"cluster,omitempty"`
	// Status is the provisioner's boot HTTP server ("http://HOST:PORT"),
	// to which attestd reports its progress (StatusPath). Informational
	// only: what is sent there is never a secret and never a decision.
	Status string `json:"status,omitempty"`
	// Sources records where each hint came from, for the log.
	Sources []string `json:"sources,omitempty"`
}

// ParseCmdline reads palisade.keyd=, palisade.cluster= and
// palisade.status= from a kernel command line. Other parameters are ignored.
func ParseCmdline(cmdline string) (Hints, error) {
	var h Hints
	for _, f := range strings.Fields(cmdline) {
		k, v, ok := strings.Cut(f, "=")
		if !ok || !strings.HasPrefix(k, "palisade.") {
			continue
		}
		if err := h.set(strings.TrimPrefix(k, "palisade."), v, "cmdline"); err != nil {
			return Hints{}, fmt.Errorf("kernel cmdline %s: %w", k, err)
		}
	}
	return h, nil
}

// ParseDHCPOption reads the value of option DHCPOptionHints.
func ParseDHCPOption(b []byte) (Hints, error) {
	var h Hints
	for _, f := range strings.Fields(string(b)) {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			return Hints{}, fmt.Errorf("dhcp option %d: %q is not key=value", DHCPOptionHints, f)
		}
		if err := h.set(k, v, "dhcp"); err != nil {
			return Hints{}, fmt.Errorf("dhcp option %d %s: %w", DHCPOptionHints, k, err)
		}
	}
	return h, nil
}

func (h *Hints) set(k, v, src string) error {
	switch k {
	case "keyd":
		for _, a := range strings.Split(v, ",") {
			if err := checkHostPort(a); err != nil {
				return err
			}
			if len(h.Keyd) >= MaxHints {
				return fmt.Errorf("more than %d keyd addresses", MaxHints)
			}
			h.Keyd = append(h.Keyd, a)
		}
	case "cluster":
		if v == "" || len(v) > 64 || strings.ContainsFunc(v, func(r rune) bool {
			return !(r == '-' || r == '_' || r == '.' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z')
		}) {
			return fmt.Errorf("cluster %q: want 1-64 of [A-Za-z0-9._-]", v)
		}
		h.Cluster = v
	case "status":
		if err := CheckStatusURL(v); err != nil {
			return err
		}
		h.Status = v
	default:
		// Unknown keys are ignored so a newer provisioner can add hints
		// without breaking older images.
		return nil
	}
	h.Sources = append(h.Sources, src+":"+k)
	return nil
}

func checkHostPort(a string) error {
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return fmt.Errorf("keyd address %q: %w", a, err)
	}
	if host == "" {
		return fmt.Errorf("keyd address %q: empty host", a)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("keyd address %q: port out of 1-65535", a)
	}
	return nil
}

// CheckStatusURL accepts the status hint: an absolute http URL of at most
// MaxStatusURL bytes naming only a host and optional port — no user
// information (a node must not be told to send credentials), no query, no
// fragment, no path but "/".
func CheckStatusURL(s string) error {
	if s == "" || len(s) > MaxStatusURL {
		return fmt.Errorf("status %d bytes: want an http URL of 1-%d", len(s), MaxStatusURL)
	}
	if strings.ContainsFunc(s, func(r rune) bool { return r <= ' ' || r > '~' }) {
		return fmt.Errorf("status %q: only printable ASCII, no spaces", s)
	}
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("status %q: %w", s, err)
	}
	switch {
	case u.Scheme != "http":
		return fmt.Errorf("status %q: scheme %q, want http", s, u.Scheme)
	case u.Opaque != "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || strings.Contains(s, "#"):
		return fmt.Errorf("status %q: want http://HOST[:PORT] without user, query or fragment", s)
	case u.Path != "" && u.Path != "/":
		return fmt.Errorf("status %q: path %q, want none", s, u.Path)
	case u.Hostname() == "":
		return fmt.Errorf("status %q: empty host", s)
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("status %q: port out of 1-65535", s)
		}
	} else if strings.HasSuffix(u.Host, ":") {
		return fmt.Errorf("status %q: empty port", s)
	}
	return nil
}

// Merge combines hints: the cmdline's come first (it is measured into the
// UKI or the launch digest, so it names what the owner built in), then
// DHCP's; duplicates are dropped. A cluster or status URL from the cmdline
// wins.
func Merge(cmdline, dhcp Hints) Hints {
	out := Hints{Cluster: cmdline.Cluster, Status: cmdline.Status}
	if out.Cluster == "" {
		out.Cluster = dhcp.Cluster
	}
	if out.Status == "" {
		out.Status = dhcp.Status
	}
	for _, a := range append(slices.Clone(cmdline.Keyd), dhcp.Keyd...) {
		if !slices.Contains(out.Keyd, a) && len(out.Keyd) < MaxHints {
			out.Keyd = append(out.Keyd, a)
		}
	}
	out.Sources = append(slices.Clone(cmdline.Sources), dhcp.Sources...)
	return out
}
