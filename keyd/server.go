package keyd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/palisade-cc/palisade/internal/boundedfile"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/palisade-cc/palisade/internal/atls"
	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/manifest"
	"github.com/palisade-cc/palisade/keyd/api"
	"github.com/palisade-cc/palisade/keyd/store"
)

type connKey struct{}

// Serve runs keyd on ln until ctx is done: a per-source rate limit, then
// the aTLS handshake (bounded, timed), then HTTP. It returns nil after a
// clean shutdown.
func (k *Keyd) Serve(ctx context.Context, ln net.Listener) error {
	limited := &limitedListener{Listener: ln, rl: k.rl, rejected: func() { k.m.overload.WithLabelValues("rate").Inc() }}
	al, err := atls.NewListener(limited, k.atls, atls.ListenerOptions{
		MaxHandshakes: k.limits.MaxHandshakes,
		OnDenied: func(remote net.Addr, c attest.Class) {
			k.m.admissions.WithLabelValues(resultDenied, string(c)).Inc()
			k.denyMu.Lock()
			k.denials[c]++
			k.denyMu.Unlock()
		},
	})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go k.watchPeers(ctx)
	go k.summariseDenials(ctx)
	rt := time.Duration(k.limits.RequestTimeout)
	stopping := make(chan struct{})
	srv := &http.Server{
		Handler:           k.Handler(),
		ReadHeaderTimeout: rt,
		ReadTimeout:       rt,
		// Long polls hold a response for up to api.MaxPeersWait.
		WriteTimeout: api.MaxPeersWait + rt,
		IdleTimeout:  2 * time.Minute,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, connKey{}, c)
		},
		BaseContext: func(net.Listener) context.Context {
			return context.WithValue(context.Background(), stoppingKey{}, stopping)
		},
		ErrorLog: nil,
	}
	// Shutdown waits for in-flight requests; a long poll would hold it for
	// up to api.MaxPeersWait, so polls are answered (with the current set)
	// as soon as shutdown starts, and their clients simply poll again.
	srv.RegisterOnShutdown(func() { close(stopping) })
	done := make(chan error, 1)
	go func() { done <- srv.Serve(al) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	err = srv.Shutdown(sctx)
	<-done
	_ = al.Close()
	_ = k.flushDenials(sctx)
	return err
}

func (k *Keyd) summariseDenials(ctx context.Context) {
	t := time.NewTicker(time.Duration(k.limits.DenialSummaryInterval))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := k.flushDenials(ctx); err != nil && ctx.Err() == nil {
				k.logger.Error("denial summary not logged", "err", err)
			}
		}
	}
}

// Handler is keyd's HTTP API. Every request must arrive on an *atls.Conn
// (Serve arranges it); a request on any other connection is denied.
func (k *Keyd) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+api.PathAdmit, k.handleAdmit)
	mux.HandleFunc("GET "+api.PathPeers, k.handlePeers)
	mux.HandleFunc("POST "+api.PathInit, k.handleInit)
	mux.HandleFunc("POST "+api.PathRecover, k.handleRecover)
	mux.HandleFunc("POST "+api.PathRevoke, k.handleOwner(api.ActionRevokeNode, api.ActionRevokeVersion))
	mux.HandleFunc("POST "+api.PathReenrol, k.handleOwner(api.ActionReenrolDisks))
	mux.HandleFunc("POST "+api.PathReplicaJoin, k.handleReplicaJoin)
	mux.HandleFunc("GET "+api.PathNodes, k.handleNodes)
	mux.HandleFunc("GET "+api.PathStatus, k.handleStatus)
	mux.HandleFunc("GET "+api.PathManifest, k.handleManifest)
	mux.HandleFunc("GET "+api.PathLogCheckpoint, k.handleCheckpoint)
	mux.HandleFunc("GET "+api.PathLogEntries, k.handleEntries)
	mux.HandleFunc("GET "+api.PathLogInclusion, k.handleInclusion)
	mux.HandleFunc("GET "+api.PathLogConsistency, k.handleConsistency)
	return k.guard(mux)
}

// guard applies what every request goes through: the connection must be
// an aTLS one; the source's rate; the unattested allow-list; a time-out;
// a bounded body.
func (k *Keyd) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, ok := r.Context().Value(connKey{}).(*atls.Conn)
		if !ok {
			k.denied(r.RemoteAddr, "", attest.Denyf(attest.ClassProtocol, "request not on an aTLS connection"))
			writeErr(w, http.StatusForbidden, api.ErrTextDenied)
			return
		}
		if !k.rl.allow(hostOf(c.RemoteAddr())) {
			k.m.overload.WithLabelValues("rate").Inc()
			retryLater(w, http.StatusTooManyRequests)
			return
		}
		if c.PeerVerified() == nil && !api.UnattestedAllowed[r.URL.Path] {
			k.denied(r.RemoteAddr, c.PeerClaims().NodeID, attest.Denyf(attest.ClassProtocol, "unattested peer called %s %s", r.Method, r.URL.Path))
			writeErr(w, http.StatusForbidden, api.ErrTextDenied)
			return
		}
		if r.URL.Path != api.PathPeers {
			ctx, cancel := context.WithTimeout(r.Context(), time.Duration(k.limits.RequestTimeout))
			defer cancel()
			r = r.WithContext(ctx)
		}
		r.Body = http.MaxBytesReader(w, r.Body, api.MaxRequestBody)
		next.ServeHTTP(w, r)
	})
}

func peerOf(r *http.Request) peerInfo {
	c := r.Context().Value(connKey{}).(*atls.Conn)
	return peerInfo{remote: r.RemoteAddr, claims: c.PeerClaims(), verified: c.PeerVerified()}
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func writeErr(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(api.Error{Error: msg})
}

func retryLater(w http.ResponseWriter, code int) {
	w.Header().Set(api.HeaderRetryAfter, "1")
	writeErr(w, code, api.ErrTextRetryLater)
}

// fail answers err: locked and overload are "retry later", denials are
// generic, owner mistakes name themselves (the owner is entitled to know
// why their own request failed; nothing secret is in those messages).
func (k *Keyd) fail(w http.ResponseWriter, r *http.Request, nodeID string, err error) {
	var d *attest.Error
	switch {
	case errors.Is(err, errLocked):
		k.m.overload.WithLabelValues("locked").Inc()
		w.Header().Set(api.HeaderRetryAfter, "5")
		writeErr(w, http.StatusServiceUnavailable, api.ErrTextLocked)
	case errors.As(err, &d):
		k.denied(r.RemoteAddr, nodeID, err)
		writeErr(w, http.StatusForbidden, api.ErrTextDenied)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		k.m.overload.WithLabelValues("busy").Inc()
		k.logger.Warn("request timed out", "path", r.URL.Path, "node", nodeID, "err", err)
		retryLater(w, http.StatusServiceUnavailable)
	default:
		k.logger.Error("request failed", "path", r.URL.Path, "node", nodeID, "err", err)
		writeErr(w, http.StatusInternalServerError, "internal error")
	}
}

func (k *Keyd) handleAdmit(w http.ResponseWriter, r *http.Request) {
	p := peerOf(r)
	select {
	case k.admitSlots <- struct{}{}:
		defer func() { <-k.admitSlots }()
	default:
		k.m.overload.WithLabelValues("busy").Inc()
		retryLater(w, http.StatusServiceUnavailable)
		return
	}
	_, _ = io.Copy(io.Discard, r.Body) // the body carries nothing trusted
	resp, err := k.admit(r.Context(), p)
	if err != nil {
		var d *attest.Error
		if !errors.Is(err, errLocked) && !errors.As(err, &d) {
			// keyd's own failure: counted as an internal denial, but the
			// node is told to retry, since nothing was decided.
			k.denied(r.RemoteAddr, p.claims.NodeID, attest.Deny(attest.ClassInternal, err))
			retryLater(w, http.StatusServiceUnavailable)
			return
		}
		k.fail(w, r, p.claims.NodeID, err)
		return
	}
	k.m.admissions.WithLabelValues(resultAdmitted, "").Inc()
	k.m.logSize.Set(float64(resp.LogIndex + 1))
	k.logger.Info("admitted", "node", p.claims.NodeID, "profile", p.claims.Profile, "platform", p.verified.Platform,
		"hardware", p.verified.HardwareID, "log_index", resp.LogIndex)
	writeJSON(w, resp)
}

func (k *Keyd) handlePeers(w http.ResponseWriter, r *http.Request) {
	p := peerOf(r)
	q := r.URL.Query()
	since, err := strconv.ParseUint(q.Get("since"), 10, 64)
	if q.Get("since") == "" {
		since, err = 0, nil
	}
	if err != nil {
		writeErr(w, http.StatusBadRequest, "since: want a revision number")
		return
	}
	wait := api.DefaultPeersWait
	if s := q.Get("wait"); s != "" {
		if wait, err = time.ParseDuration(s); err != nil || wait < 0 || wait > api.MaxPeersWait {
			writeErr(w, http.StatusBadRequest, fmt.Sprintf("wait: want a duration up to %s", api.MaxPeersWait))
			return
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), wait)
	defer cancel()
	stopping, _ := r.Context().Value(stoppingKey{}).(chan struct{}) // nil outside Serve: never ready
	// A revoked node gets nothing more from the directory.
	for {
		changed := k.peersChanged()
		ps, err := k.peerSet(r.Context())
		if err != nil {
			k.fail(w, r, p.claims.NodeID, err)
			return
		}
		if p.claims.Role == attest.RoleNode && !listedWithKey(ps, p.claims.NodeID, p.claims.WireGuardKey) {
			k.fail(w, r, p.claims.NodeID, attest.Denyf(attest.ClassRevoked, "peers: node %q with this session's WireGuard key is not in the peer set", p.claims.NodeID))
			return
		}
		if ps.Revision > since {
			writeJSON(w, ps)
			return
		}
		select {
		case <-changed:
		case <-ctx.Done():
			writeJSON(w, ps)
			return
		case <-stopping:
			writeJSON(w, ps)
			return
		}
	}
}

// stoppingKey carries the channel Serve closes when shutdown starts.
type stoppingKey struct{}

// listedWithKey: the node is listed with the key its session claims. A session of
// an earlier boot (whose key keyd has since replaced at a new admission)
// gets no more of the directory.
func listedWithKey(ps *api.PeerSet, id string, wg []byte) bool {
	for i := range ps.Peers {
		if ps.Peers[i].NodeID == id {
			return bytes.Equal(ps.Peers[i].WireGuardKey, wg)
		}
	}
	return false
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeErr(w, http.StatusBadRequest, "request body: "+err.Error())
		return false
	}
	return true
}

func (k *Keyd) ownerFail(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, errConflict) {
		k.logger.Warn("owner request refused", "path", r.URL.Path, "err", err)
		writeErr(w, http.StatusConflict, err.Error())
		return
	}
	var d *attest.Error
	if errors.As(err, &d) || errors.Is(err, context.DeadlineExceeded) {
		k.fail(w, r, "", err)
		return
	}
	var st interface{ Timeout() bool }
	if errors.As(err, &st) {
		k.fail(w, r, "", err)
		return
	}
	k.logger.Warn("owner request refused", "path", r.URL.Path, "err", err)
	if errors.Is(err, store.ErrNotFound) {
		writeErr(w, http.StatusInternalServerError, "internal error")
		return
	}
	writeErr(w, http.StatusBadRequest, err.Error())
}

func (k *Keyd) handleInit(w http.ResponseWriter, r *http.Request) {
	var req api.InitRequest
	if !decode(w, r, &req) {
		return
	}
	if err := k.initCluster(r.Context(), &req); err != nil {
		k.ownerFail(w, r, err)
		return
	}
	k.logger.Info("initialised", "cluster", req.ClusterID, "remote", r.RemoteAddr)
	writeJSON(w, struct{}{})
}

func (k *Keyd) handleRecover(w http.ResponseWriter, r *http.Request) {
	var req api.RecoverRequest
	if !decode(w, r, &req) {
		return
	}
	if err := k.recoverSecret(r.Context(), &req); err != nil {
		k.ownerFail(w, r, err)
		return
	}
	k.logger.Info("master secret recovered", "remote", r.RemoteAddr)
	writeJSON(w, struct{}{})
}

func (k *Keyd) handleOwner(actions ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req api.OwnerRequest
		if !decode(w, r, &req) {
			return
		}
		if err := k.ownerRequest(r.Context(), &req, actions...); err != nil {
			k.ownerFail(w, r, err)
			return
		}
		writeJSON(w, struct{}{})
	}
}

func (k *Keyd) handleReplicaJoin(w http.ResponseWriter, r *http.Request) {
	p := peerOf(r)
	_, _ = io.Copy(io.Discard, r.Body)
	resp, err := k.replicaJoin(r.Context(), p)
	if err != nil {
		k.fail(w, r, p.claims.NodeID, err)
		return
	}
	k.logger.Info("replica joined", "node", p.claims.NodeID, "hardware", p.verified.HardwareID, "log_index", resp.LogIndex)
	writeJSON(w, resp)
}

func (k *Keyd) handleNodes(w http.ResponseWriter, r *http.Request) {
	out := api.Nodes{Nodes: []api.Node{}}
	err := k.st.View(r.Context(), func(tx store.Tx) error {
		var err error
		if out.RevokedVersion, err = getU64(tx, bucketMeta, keyRevokedVersion); err != nil {
			return err
		}
		return tx.Scan(bucketNodes, nil, func(key, v []byte) error {
			var n nodeRecord
			if err := json.Unmarshal(v, &n); err != nil {
				return fmt.Errorf("decode node %q: %w", key, err)
			}
			revoked, err := isRevoked(tx, string(key))
			if err != nil {
				return err
			}
			out.Nodes = append(out.Nodes, n.apiNode(revoked))
			return nil
		})
	})
	if err != nil {
		k.fail(w, r, "", err)
		return
	}
	writeJSON(w, out)
}

func (k *Keyd) handleStatus(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, api.Status{ClusterID: k.cfg.ClusterID, Unlocked: k.Unlocked(), Initialised: k.cluster.Load() != nil,
		SecurityVersion: k.refs.Load().SecurityVersion()})
}

// handleManifest serves the signed manifest bundle of config.manifest_path
// verbatim, to attested and unattested peers alike (api.UnattestedAllowed):
// it is public, and a booting node needs it before it can judge keyd, so it
// asks on a session where neither side attests and trusts nothing in the
// answer until the signature verified against its own pinned key
// (docs/attestd.md). It is read per request, so a reloaded manifest
// (SIGHUP) is served at once.
func (k *Keyd) handleManifest(w http.ResponseWriter, r *http.Request) {
	b, err := readManifestBundle(k.cfg.ManifestPath)
	if err != nil {
		k.fail(w, r, "", err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(b)
}

// readManifestBundle reads a bundle file of at most manifest.MaxSize bytes.
func readManifestBundle(path string) ([]byte, error) {
	b, err := boundedfile.Read(path, manifest.MaxSize)
	if err != nil {
		return nil, fmt.Errorf("manifest bundle: %w", err)
	}
	return b, nil
}

func (k *Keyd) handleCheckpoint(w http.ResponseWriter, r *http.Request) {
	_, cp, err := k.log.Checkpoint(r.Context())
	if err != nil {
		k.fail(w, r, "", err)
		return
	}
	writeJSON(w, struct {
		Checkpoint []byte `json:"checkpoint"`
	}{cp})
}

func uintParams(w http.ResponseWriter, r *http.Request, names ...string) ([]uint64, bool) {
	out := make([]uint64, len(names))
	for i, n := range names {
		v, err := strconv.ParseUint(r.URL.Query().Get(n), 10, 64)
		if err != nil {
			writeErr(w, http.StatusBadRequest, n+": want a non-negative integer")
			return nil, false
		}
		out[i] = v
	}
	return out, true
}

func (k *Keyd) logSize(w http.ResponseWriter, r *http.Request) (uint64, bool) {
	n64, err := k.log.Size(r.Context())
	n := uint64(n64)
	if err != nil {
		k.fail(w, r, "", err)
		return 0, false
	}
	k.m.logSize.Set(float64(n))
	return n, true
}

func (k *Keyd) handleEntries(w http.ResponseWriter, r *http.Request) {
	v, ok := uintParams(w, r, "start", "end")
	if !ok {
		return
	}
	size, ok := k.logSize(w, r)
	if !ok {
		return
	}
	start, end := v[0], v[1]
	if end > size {
		end = size
	}
	if start >= end || end-start > api.MaxLogEntriesPerPage {
		writeErr(w, http.StatusBadRequest, fmt.Sprintf("start %d, end %d: want start < end ≤ %d, at most %d entries", v[0], v[1], size, api.MaxLogEntriesPerPage))
		return
	}
	es, err := k.log.Entries(r.Context(), int64(start), int64(end))
	if err != nil {
		k.fail(w, r, "", err)
		return
	}
	writeJSON(w, api.LogEntries{Start: start, Entries: es})
}

func (k *Keyd) handleInclusion(w http.ResponseWriter, r *http.Request) {
	v, ok := uintParams(w, r, "index", "size")
	if !ok {
		return
	}
	size, ok := k.logSize(w, r)
	if !ok {
		return
	}
	if v[0] >= v[1] || v[1] > size {
		writeErr(w, http.StatusBadRequest, fmt.Sprintf("index %d, size %d: want index < size ≤ %d", v[0], v[1], size))
		return
	}
	p, err := k.log.ProveInclusion(r.Context(), int64(v[0]), int64(v[1]))
	if err != nil {
		k.fail(w, r, "", err)
		return
	}
	writeJSON(w, api.Proof{Hashes: hashes(p)})
}

func (k *Keyd) handleConsistency(w http.ResponseWriter, r *http.Request) {
	v, ok := uintParams(w, r, "old", "new")
	if !ok {
		return
	}
	size, ok := k.logSize(w, r)
	if !ok {
		return
	}
	if v[0] == 0 || v[0] > v[1] || v[1] > size {
		writeErr(w, http.StatusBadRequest, fmt.Sprintf("old %d, new %d: want 0 < old ≤ new ≤ %d", v[0], v[1], size))
		return
	}
	p, err := k.log.ProveConsistency(r.Context(), int64(v[0]), int64(v[1]))
	if err != nil {
		k.fail(w, r, "", err)
		return
	}
	writeJSON(w, api.Proof{Hashes: hashes(p)})
}
