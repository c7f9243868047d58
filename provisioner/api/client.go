package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/palisade-cc/palisade/provisioner/inventory"
)

// Client calls the API; the CLI is built on it.
type Client struct {
	// Base is the server's URL, e.g. "http://127.0.0.1:8081".
	Base  string
	Token string
	// HTTP defaults to http.DefaultClient.
	HTTP *http.Client
}

func (c *Client) do(ctx context.Context, method, path string, body io.Reader, hdr http.Header, out any) error {
	u := strings.TrimSuffix(c.Base, "/") + path
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		e := &Error{Status: resp.StatusCode}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
		if json.Unmarshal(b, e) != nil || e.Message == "" {
			e.Message = strings.TrimSpace(string(b))
			if e.Message == "" {
				e.Message = resp.Status
			}
		}
		return e
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decode %s %s: %w", method, path, err)
	}
	return nil
}

func (c *Client) doJSON(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	hdr := http.Header{}
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
		hdr.Set("Content-Type", "application/json")
	}
	return c.do(ctx, method, path, body, hdr, out)
}

func esc(s string) string { return url.PathEscape(s) }

// WhoAmI returns the role of the client's token.
func (c *Client) WhoAmI(ctx context.Context) (Role, error) {
	var r struct{ Role Role }
	err := c.doJSON(ctx, "GET", Prefix+"whoami", nil, &r)
	return r.Role, err
}

// Machines lists machines; state filters when not empty.
func (c *Client) Machines(ctx context.Context, state string) ([]inventory.Machine, error) {
	var ms []inventory.Machine
	p := Prefix + "machines"
	if state != "" {
		p += "?state=" + url.QueryEscape(state)
	}
	return ms, c.doJSON(ctx, "GET", p, nil, &ms)
}

// Machine shows one machine.
func (c *Client) Machine(ctx context.Context, mac string) (inventory.Machine, error) {
	var m inventory.Machine
	return m, c.doJSON(ctx, "GET", Prefix+"machines/"+esc(mac), nil, &m)
}

// Timeline returns a machine's boot events.
func (c *Client) Timeline(ctx context.Context, mac string) ([]inventory.Event, error) {
	var ev []inventory.Event
	return ev, c.doJSON(ctx, "GET", Prefix+"machines/"+esc(mac)+"/events", nil, &ev)
}

// Accept accepts a machine, optionally with a profile.
func (c *Client) Accept(ctx context.Context, mac, profile string) (inventory.Machine, error) {
	var m inventory.Machine
	return m, c.doJSON(ctx, "POST", Prefix+"machines/"+esc(mac)+"/accept", AcceptRequest{Profile: profile}, &m)
}

// Assign assigns a profile.
func (c *Client) Assign(ctx context.Context, mac, profile string) (inventory.Machine, error) {
	var m inventory.Machine
	return m, c.doJSON(ctx, "POST", Prefix+"machines/"+esc(mac)+"/assign", AssignRequest{Profile: profile}, &m)
}

// Report records a state reported by the cluster.
func (c *Client) Report(ctx context.Context, mac string, st inventory.State, detail string) (inventory.Machine, error) {
	var m inventory.Machine
	return m, c.doJSON(ctx, "POST", Prefix+"machines/"+esc(mac)+"/state", ReportRequest{State: st, Detail: detail}, &m)
}

// Forget removes a machine.
func (c *Client) Forget(ctx context.Context, mac string) error {
	return c.doJSON(ctx, "DELETE", Prefix+"machines/"+esc(mac), nil, nil)
}

// Events returns events after a sequence number.
func (c *Client) Events(ctx context.Context, after uint64, limit int) ([]inventory.Event, error) {
	var ev []inventory.Event
	return ev, c.doJSON(ctx, "GET", fmt.Sprintf("%sevents?after=%d&limit=%d", Prefix, after, limit), nil, &ev)
}

// Profiles lists profiles.
func (c *Client) Profiles(ctx context.Context) ([]inventory.Profile, error) {
	var ps []inventory.Profile
	return ps, c.doJSON(ctx, "GET", Prefix+"profiles", nil, &ps)
}

// Profile shows one profile.
func (c *Client) Profile(ctx context.Context, name string) (inventory.Profile, error) {
	var p inventory.Profile
	return p, c.doJSON(ctx, "GET", Prefix+"profiles/"+esc(name), nil, &p)
}

// PutProfile creates or replaces a profile.
func (c *Client) PutProfile(ctx context.Context, p inventory.Profile) error {
	return c.doJSON(ctx, "PUT", Prefix+"profiles/"+esc(p.Name), p, nil)
}

// DeleteProfile deletes a profile.
func (c *Client) DeleteProfile(ctx context.Context, name string) error {
	return c.doJSON(ctx, "DELETE", Prefix+"profiles/"+esc(name), nil, nil)
}

// Images lists images.
func (c *Client) Images(ctx context.Context) ([]Image, error) {
	var l []Image
	return l, c.doJSON(ctx, "GET", Prefix+"images", nil, &l)
}

// AddImage uploads an image; sha256 (hex, optional) is checked by the server.
func (c *Client) AddImage(ctx context.Context, name string, r io.Reader, sha256 string) (Image, error) {
	hdr := http.Header{}
	hdr.Set("Content-Type", "application/octet-stream")
	if sha256 != "" {
		hdr.Set("X-Content-SHA256", sha256)
	}
	var img Image
	return img, c.do(ctx, "PUT", Prefix+"images/"+esc(name), r, hdr, &img)
}
