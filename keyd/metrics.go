package keyd

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/palisade-cc/palisade/internal/attest"
)

// metrics are keyd's Prometheus metrics (docs/keyd.md §Metrics).
type metrics struct {
	admissions   *prometheus.CounterVec
	verification *prometheus.HistogramVec
	peers        prometheus.Gauge
	logSize      prometheus.Gauge
	overload     *prometheus.CounterVec
	kubeIssue    *prometheus.CounterVec
}

// Result label values of keyd_admissions_total.
const (
	resultAdmitted = "admitted"
	resultDenied   = "denied"
)

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		admissions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyd_admissions_total",
			Help: "Admission attempts by result (admitted, denied) and failure class (attest.Classes; empty when admitted).",
		}, []string{"result", "class"}),
		verification: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "keyd_verification_seconds",
			Help:    "Time to verify one piece of evidence, by platform.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}, []string{"platform"}),
		peers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "keyd_peers", Help: "Nodes in the current mesh peer set.",
		}),
		logSize: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "keyd_log_size", Help: "Records in the admission log.",
		}),
		overload: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyd_retry_later_total",
			Help: "Requests and connections turned away with retry-later, by reason (rate, busy, locked).",
		}, []string{"reason"}),
		kubeIssue: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyd_kube_join_total",
			Help: "kubeadm join material issued to admitted nodes, by result (ok, error: admitted without it).",
		}, []string{"result"}),
	}
	for _, c := range []prometheus.Collector{m.admissions, m.verification, m.peers, m.logSize, m.overload, m.kubeIssue} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	// Pre-declare every label so dashboards see zeros, not gaps.
	m.admissions.WithLabelValues(resultAdmitted, "")
	for _, c := range attest.Classes {
		m.admissions.WithLabelValues(resultDenied, string(c))
	}
	for _, p := range attest.Platforms {
		m.verification.WithLabelValues(string(p))
	}
	m.kubeIssue.WithLabelValues("ok")
	m.kubeIssue.WithLabelValues("error")
	for _, r := range []string{"rate", "busy", "locked"} {
		m.overload.WithLabelValues(r)
	}
	return m, nil
}
