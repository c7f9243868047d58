// Package config is the provisioner's one typed, versioned configuration
// file (JSON with // and /* */ comments); it does not start anything.
package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/palisade-cc/palisade/provisioner/dhcp"
	"github.com/palisade-cc/palisade/provisioner/httpboot"
	"github.com/palisade-cc/palisade/provisioner/inventory"
	"github.com/palisade-cc/palisade/provisioner/tftp"
)

// Version is the only file format version this build reads.
const Version = 1

// Config is the whole provisioner configuration.
type Config struct {
	// Version must be 1.
	Version int `json:"version"`
	// DataDir holds inventory.db and, unless ImagesDir says otherwise, the
	// images directory. Default /var/lib/palisade-provisioner.
	DataDir string `json:"data_dir"`
	// ImagesDir is served by TFTP and HTTP. Default DataDir/images.
	ImagesDir string `json:"images_dir,omitempty"`
	API       API    `json:"api"`
	// DHCP, TFTP and HTTP are the servers; a missing section disables one.
	DHCP *dhcp.Config     `json:"dhcp,omitempty"`
	TFTP *tftp.Config     `json:"tftp,omitempty"`
	HTTP *httpboot.Config `json:"http,omitempty"`
	Boot Boot             `json:"boot"`
	// Accept rules accept machines automatically.
	Accept []inventory.Rule `json:"accept,omitempty"`
	// Profiles are written into the inventory at start (the file wins over
	// earlier API edits of a profile of the same name).
	Profiles []inventory.Profile `json:"profiles,omitempty"`
	Log      Log                 `json:"log"`
}

// API is the HTTP listener of the API, the web UI and /metrics.
type API struct {
	// Listen is host:port. Default 127.0.0.1:8081.
	Listen string `json:"listen"`
	// AdminTokenFile holds the admin token (required). The file must not be
	// readable by others (mode 0600 or 0640).
	AdminTokenFile string `json:"admin_token_file"`
	// ReadOnlyTokenFile holds the read-only token (optional).
	ReadOnlyTokenFile string `json:"read_only_token_file,omitempty"`
}

// Boot says what machines are told to boot.
type Boot struct {
	// HTTPBase is the URL prefix of images for HTTP boot clients, e.g.
	// "http://192.0.2.1:8080"; default: derived from http.listen.
	HTTPBase string `json:"http_base,omitempty"`
	// BIOSFile is offered to legacy BIOS clients; empty: no answer.
	BIOSFile string `json:"bios_file,omitempty"`
	// DiscoveryProfile is booted by machines not yet accepted; empty: they
	// get no boot answer.
	DiscoveryProfile string `json:"discovery_profile,omitempty"`
	// DefaultProfile is booted by accepted machines without one.
	DefaultProfile string `json:"default_profile,omitempty"`
}

// Log configures log/slog output on stderr.
type Log struct {
	// Level is debug, info, warn or error. Default info.
	Level string `json:"level,omitempty"`
	// Format is text or json. Default text.
	Format string `json:"format,omitempty"`
}

// Default is the configuration used for anything the file leaves out.
func Default() Config {
	return Config{
		Version: Version,
		DataDir: "/var/lib/palisade-provisioner",
		API:     API{Listen: "127.0.0.1:8081", AdminTokenFile: "/etc/palisade/provisioner-admin.token"},
		Log:     Log{Level: "info", Format: "text"},
	}
}

// Parse reads a configuration from JSON with comments, fills defaults and
// validates it. Unknown fields are errors, so a typo is not silently ignored.
func Parse(b []byte) (Config, error) {
	clean, err := StripComments(b)
	if err != nil {
		return Config{}, err
	}
	var probe struct {
		Version *int `json:"version"`
	}
	if err := json.Unmarshal(clean, &probe); err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	if probe.Version == nil {
		return Config{}, fmt.Errorf("config: version: missing (this build reads %d)", Version)
	}
	if *probe.Version != Version {
		return Config{}, fmt.Errorf("config: version: %d is not supported (this build reads %d)", *probe.Version, Version)
	}
	c := Default()
	dec := json.NewDecoder(bytes.NewReader(clean))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	if dec.More() {
		return Config{}, errors.New("config: trailing data after the top-level object")
	}
	c.fill()
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// Load reads and parses the file at path.
func Load(path string) (Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	c, err := Parse(b)
	if err != nil {
		return Config{}, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

func (c *Config) fill() {
	if c.API.Listen == "" {
		c.API.Listen = "127.0.0.1:8081"
	}
	if c.ImagesDir == "" && c.DataDir != "" {
		c.ImagesDir = filepath.Join(c.DataDir, "images")
	}
	if c.TFTP != nil && c.TFTP.Root == "" {
		c.TFTP.Root = c.ImagesDir
	}
	if c.HTTP != nil {
		if c.HTTP.Listen == "" {
			c.HTTP.Listen = "127.0.0.1:8080"
		}
		if c.HTTP.Root == "" {
			c.HTTP.Root = c.ImagesDir
		}
	}
	if c.DHCP != nil && c.DHCP.Mode == dhcp.ModeAuthoritative && c.DHCP.LeaseDB == "" && c.DataDir != "" {
		c.DHCP.LeaseDB = filepath.Join(c.DataDir, "leases.db")
	}
	if c.Boot.HTTPBase == "" && c.HTTP != nil {
		host, port, err := net.SplitHostPort(c.HTTP.Listen)
		// Port 0 is chosen at bind time; provisioner.New derives it then.
		if err == nil && host != "" && port != "0" && !net.ParseIP(host).IsUnspecified() {
			c.Boot.HTTPBase = "http://" + net.JoinHostPort(host, port)
		}
	}
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if c.Log.Format == "" {
		c.Log.Format = "text"
	}
}

// Validate names the first bad field (as a JSON path) and what is allowed.
func (c *Config) Validate() error {
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("config: %s: %s", field, fmt.Sprintf(format, args...))
	}
	if c.Version != Version {
		return bad("version", "%d is not supported (this build reads %d)", c.Version, Version)
	}
	if c.DataDir == "" || !filepath.IsAbs(c.DataDir) {
		return bad("data_dir", "%q must be an absolute path", c.DataDir)
	}
	if c.ImagesDir != "" && !filepath.IsAbs(c.ImagesDir) {
		return bad("images_dir", "%q must be an absolute path", c.ImagesDir)
	}
	if _, _, err := net.SplitHostPort(c.API.Listen); err != nil {
		return bad("api.listen", "%q is not host:port", c.API.Listen)
	}
	if c.API.AdminTokenFile == "" {
		return bad("api.admin_token_file", "required (a file holding the admin token)")
	}
	if c.API.ReadOnlyTokenFile == c.API.AdminTokenFile {
		return bad("api.read_only_token_file", "must differ from api.admin_token_file")
	}
	if c.DHCP != nil {
		if err := c.DHCP.Validate(); err != nil {
			return fmt.Errorf("config: dhcp.%w", err)
		}
	}
	if c.TFTP != nil {
		if err := c.TFTP.Validate(); err != nil {
			return fmt.Errorf("config: %w", err) // names tftp.<field> itself
		}
	}
	if c.HTTP != nil {
		if err := c.HTTP.Validate(); err != nil {
			return fmt.Errorf("config: %w", err) // names http.<field> itself
		}
	}
	if c.Boot.HTTPBase != "" {
		u, err := url.Parse(c.Boot.HTTPBase)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
			return bad("boot.http_base", "%q is not an http:// or https:// URL without query", c.Boot.HTTPBase)
		}
	}
	if c.Boot.BIOSFile != "" && !inventory.ValidName(c.Boot.BIOSFile) {
		return bad("boot.bios_file", "%q is not a file name in the images directory", c.Boot.BIOSFile)
	}
	names := map[string]bool{}
	for i, p := range c.Profiles {
		if err := p.Validate(); err != nil {
			return fmt.Errorf("config: profiles[%d].%w", i, err)
		}
		if names[p.Name] {
			return bad(fmt.Sprintf("profiles[%d].name", i), "%q is defined twice", p.Name)
		}
		names[p.Name] = true
	}
	for i, r := range c.Accept {
		if err := r.Validate(); err != nil {
			return fmt.Errorf("config: accept[%d].%w", i, err)
		}
	}
	if !slices.Contains([]string{"debug", "info", "warn", "error"}, c.Log.Level) {
		return bad("log.level", "%q is not one of debug, info, warn, error", c.Log.Level)
	}
	if !slices.Contains([]string{"text", "json"}, c.Log.Format) {
		return bad("log.format", "%q is not one of text, json", c.Log.Format)
	}
	return nil
}

// Tokens reads the admin and read-only tokens. A token file readable or
// writable by others is refused: whoever reads it controls the inventory.
func (c *Config) Tokens() (admin, readOnly string, err error) {
	admin, err = ReadTokenFile(c.API.AdminTokenFile)
	if err != nil {
		return "", "", fmt.Errorf("config: api.admin_token_file: %w", err)
	}
	if c.API.ReadOnlyTokenFile != "" {
		readOnly, err = ReadTokenFile(c.API.ReadOnlyTokenFile)
		if err != nil {
			return "", "", fmt.Errorf("config: api.read_only_token_file: %w", err)
		}
	}
	if admin == readOnly {
		return "", "", errors.New("config: api.read_only_token_file: holds the admin token")
	}
	return admin, readOnly, nil
}

// ReadTokenFile reads a token: the file's first line, trimmed; it must be
// at least 16 bytes and the file not accessible to others.
func ReadTokenFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", err
	}
	if st.Mode().Perm()&0o007 != 0 {
		return "", fmt.Errorf("%s has mode %v: others may access it (chmod 600)", path, st.Mode().Perm())
	}
	b := make([]byte, 4096)
	n, _ := f.Read(b)
	tok, _, _ := strings.Cut(string(b[:n]), "\n")
	tok = strings.TrimSpace(tok)
	if len(tok) < 16 {
		return "", fmt.Errorf("%s: token shorter than 16 bytes", path)
	}
	return tok, nil
}

// StripComments removes // line and /* block */ comments outside JSON
// strings, keeping newlines so json errors still point at the right line.
func StripComments(b []byte) ([]byte, error) {
	out := make([]byte, 0, len(b))
	inStr, esc := false, false
	for i := 0; i < len(b); i++ {
		c := b[i]
		if inStr {
			out = append(out, c)
			switch {
			case esc:
				esc = false
			case c == '\\':
				esc = true
			case c == '"':
				inStr = false
			}
			continue
		}
		switch {
		case c == '"':
			inStr = true
			out = append(out, c)
		case c == '/' && i+1 < len(b) && b[i+1] == '/':
			for i < len(b) && b[i] != '\n' {
				i++
			}
			if i < len(b) {
				out = append(out, '\n')
			}
		case c == '/' && i+1 < len(b) && b[i+1] == '*':
			end := bytes.Index(b[i+2:], []byte("*/"))
			if end < 0 {
				return nil, fmt.Errorf("config: unterminated /* comment at byte %d", i)
			}
			for _, x := range b[i : i+2+end+2] {
				if x == '\n' {
					out = append(out, '\n')
				}
			}
			i += 2 + end + 1
		default:
			out = append(out, c)
		}
	}
	return out, nil
}
