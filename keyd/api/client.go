package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/palisade-cc/palisade/internal/atls"
)

// Errors a Client returns for the cases a caller must tell apart.
var (
	// ErrDenied: keyd (or the aTLS handshake) denied the request. The
	// reason is in keyd's log only.
	ErrDenied = errors.New("keyd: denied")
	// ErrRetryLater: keyd is overloaded or rate-limits this source, or it
	// closed the connection before the handshake finished; nothing was
	// decided, the same request may be sent again after a pause.
	ErrRetryLater = errors.New("keyd: retry later")
	// ErrLocked: keyd has no master secret (init, recover or replica
	// join first).
	ErrLocked = errors.New("keyd: locked")
)

// maxResponse bounds a response body; a full peer set of 10,000 nodes is
// a few MiB.
const maxResponse = 64 << 20

// Client calls keyd over aTLS. The zero value is not usable: use NewClient.
type Client struct {
	// HTTP has a Transport whose DialContext runs the aTLS handshake.
	HTTP *http.Client
	// Base is "http://<host:port>": the TLS is below HTTP's view.
	Base string
}

// NewClient returns a client of the keyd at addr (host:port) whose aTLS
// side is cfg: a node attests itself and verifies keyd; the owner's
// verifier sets no Attester but still verifies keyd.
func NewClient(addr string, cfg *atls.Config) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			c, err := atls.Dial(ctx, network, addr, cfg)
			if err != nil {
				return nil, classifyDial(err)
			}
			return c, nil
		},
		MaxIdleConnsPerHost:   4,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: MaxPeersWait + 10*time.Second,
		DisableCompression:    true,
	}
	return &Client{HTTP: &http.Client{Transport: tr}, Base: "http://" + addr}, nil
}

// classifyDial maps a failed handshake: a denial by keyd is ErrDenied,
// a local verification failure of keyd is kept as is (the caller must not
// trust that keyd), anything else (reset, time-out) is ErrRetryLater.
func classifyDial(err error) error {
	switch {
	case errors.Is(err, atls.ErrPeerDenied):
		return fmt.Errorf("%w: %w", ErrDenied, err)
	case isNetErr(err):
		return fmt.Errorf("%w: %w", ErrRetryLater, err)
	}
	return err
}

func isNetErr(err error) bool {
	var ne net.Error
	var oe *net.OpError
	return errors.As(err, &ne) || errors.As(err, &oe) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

// StatusError is keyd's answer with a status other than 200, 403, 429 and
// 503 (which are ErrDenied and ErrRetryLater): keyd received the request
// and refused it.
type StatusError struct {
	Method, Path, Status string
	Code                 int
	Text                 string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("%s %s: %s: %s", e.Method, e.Path, e.Status, e.Text)
}

// Close releases idle connections.
func (c *Client) Close() { c.HTTP.CloseIdleConnections() }

func (c *Client) do(ctx context.Context, method, path string, q url.Values, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	u := c.Base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse+1))
	if err != nil {
		return fmt.Errorf("%s %s: read response: %w", method, path, err)
	}
	if len(b) > maxResponse {
		return fmt.Errorf("%s %s: response over %d bytes", method, path, maxResponse)
	}
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusServiceUnavailable, http.StatusTooManyRequests:
		var e Error
		if json.Unmarshal(b, &e) == nil && e.Error == ErrTextLocked {
			return ErrLocked
		}
		return fmt.Errorf("%w: %s %s: %s", ErrRetryLater, method, path, resp.Status)
	case http.StatusForbidden:
		return fmt.Errorf("%w: %s %s", ErrDenied, method, path)
	default:
		var e Error
		_ = json.Unmarshal(b, &e)
		return &StatusError{Method: method, Path: path, Status: resp.Status, Code: resp.StatusCode, Text: e.Error}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("%s %s: decode response: %w", method, path, err)
	}
	return nil
}

// Admit asks for admission; the node's identity and claims are those its
// aTLS handshake proved.
func (c *Client) Admit(ctx context.Context) (*AdmitResponse, error) {
	var r AdmitResponse
	return &r, c.do(ctx, http.MethodPost, PathAdmit, nil, AdmitRequest{}, &r)
}

// Peers returns the peer set once its revision is above since, or the
// current one after wait (0: DefaultPeersWait).
func (c *Client) Peers(ctx context.Context, since uint64, wait time.Duration) (*PeerSet, error) {
	q := url.Values{"since": {strconv.FormatUint(since, 10)}}
	if wait > 0 {
		q.Set("wait", wait.String())
	}
	var r PeerSet
	return &r, c.do(ctx, http.MethodGet, PathPeers, q, nil, &r)
}

// Init hands keyd the master secret, the cluster configuration and the owner key.
func (c *Client) Init(ctx context.Context, req *InitRequest) error {
	return c.do(ctx, http.MethodPost, PathInit, nil, req, nil)
}

// Recover hands the master secret to a keyd that lost it.
func (c *Client) Recover(ctx context.Context, req *RecoverRequest) error {
	return c.do(ctx, http.MethodPost, PathRecover, nil, req, nil)
}

// Revoke sends an owner-signed revocation (ActionRevokeNode or ActionRevokeVersion).
func (c *Client) Revoke(ctx context.Context, req *OwnerRequest) error {
	return c.do(ctx, http.MethodPost, PathRevoke, nil, req, nil)
}

// Reenrol sends an owner-signed ActionReenrolDisks: the node's next
// admission records its disks anew.
func (c *Client) Reenrol(ctx context.Context, req *OwnerRequest) error {
	return c.do(ctx, http.MethodPost, PathReenrol, nil, req, nil)
}

// ReplicaJoin asks for the master secret as an attested keyd replica.
func (c *Client) ReplicaJoin(ctx context.Context) (*ReplicaJoinResponse, error) {
	var r ReplicaJoinResponse
	return &r, c.do(ctx, http.MethodPost, PathReplicaJoin, nil, struct{}{}, &r)
}

// Nodes returns the registry.
func (c *Client) Nodes(ctx context.Context) (*Nodes, error) {
	var r Nodes
	return &r, c.do(ctx, http.MethodGet, PathNodes, nil, nil, &r)
}

// Status returns keyd's state.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	var r Status
	return &r, c.do(ctx, http.MethodGet, PathStatus, nil, nil, &r)
}

// Manifest returns the signed manifest bundle keyd serves (GET
// PathManifest), as keyd sent it. Nothing in it is trusted yet: the caller
// verifies it against its own pinned keys (internal/manifest.Verify) before
// it uses any of it, so it may fetch it on an unattested session.
func (c *Client) Manifest(ctx context.Context) ([]byte, error) {
	var r json.RawMessage
	if err := c.do(ctx, http.MethodGet, PathManifest, nil, nil, &r); err != nil {
		return nil, err
	}
	return r, nil
}

// Checkpoint returns the log's latest signed checkpoint (note format).
func (c *Client) Checkpoint(ctx context.Context) ([]byte, error) {
	var r struct {
		Checkpoint []byte `json:"checkpoint"`
	}
	return r.Checkpoint, c.do(ctx, http.MethodGet, PathLogCheckpoint, nil, nil, &r)
}

// Entries returns log records [start, end).
func (c *Client) Entries(ctx context.Context, start, end uint64) (*LogEntries, error) {
	q := url.Values{"start": {strconv.FormatUint(start, 10)}, "end": {strconv.FormatUint(end, 10)}}
	var r LogEntries
	return &r, c.do(ctx, http.MethodGet, PathLogEntries, q, nil, &r)
}

// InclusionProof proves record index in the tree of size.
func (c *Client) InclusionProof(ctx context.Context, index, size uint64) (*Proof, error) {
	q := url.Values{"index": {strconv.FormatUint(index, 10)}, "size": {strconv.FormatUint(size, 10)}}
	var r Proof
	return &r, c.do(ctx, http.MethodGet, PathLogInclusion, q, nil, &r)
}

// ConsistencyProof proves the tree of size old is a prefix of size new.
func (c *Client) ConsistencyProof(ctx context.Context, old, new uint64) (*Proof, error) {
	q := url.Values{"old": {strconv.FormatUint(old, 10)}, "new": {strconv.FormatUint(new, 10)}}
	var r Proof
	return &r, c.do(ctx, http.MethodGet, PathLogConsistency, q, nil, &r)
}
