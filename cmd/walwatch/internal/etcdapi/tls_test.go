package etcdapi

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// testCA is a certificate authority made for a test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

// issue returns a certificate for 127.0.0.1 signed by ca, for a server or
// a client.
func (ca *testCA) issue(t *testing.T, name string, usage x509.ExtKeyUsage) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// tlsEnv starts a server with TLS; with clientCAs, client certificates of
// that CA are required.
func tlsEnv(t *testing.T, serverCA *testCA, clientCAs *testCA) *env {
	t.Helper()
	cfg := &tls.Config{
		Certificates: []tls.Certificate{serverCA.issue(t, "walwatch", x509.ExtKeyUsageServerAuth)},
		MinVersion:   tls.VersionTLS12,
	}
	if clientCAs != nil {
		cfg.ClientCAs = clientCAs.pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return newEnv(t, func(c *Config) { c.TLS = cfg })
}

// tlsClient returns a clientv3 client over TLS trusting ca, with cert if
// it is not nil.
func tlsClient(t *testing.T, e *env, ca *testCA, cert *tls.Certificate) *clientv3.Client {
	t.Helper()
	cfg := &tls.Config{RootCAs: ca.pool, MinVersion: tls.VersionTLS12}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return newEtcdClient(t, clientv3.Config{Endpoints: []string{"https://" + e.addr}, TLS: cfg})
}

// shortCtx bounds a call that is expected to fail: gRPC retries a
// connection the server refuses until the deadline.
func shortCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// With client certificates required (--etcd-trusted-ca-file), a client with
// one of the CA's certificates is served, over gRPC and the gateway; one
// without, or with another CA's, fails the TLS handshake.
func TestTLSClientCertificates(t *testing.T) {
	ca, other := newTestCA(t, "walwatch-ca"), newTestCA(t, "other-ca")
	e := tlsEnv(t, ca, ca)
	good := ca.issue(t, "kube-apiserver", x509.ExtKeyUsageClientAuth)
	stranger := other.issue(t, "stranger", x509.ExtKeyUsageClientAuth)

	c := tlsClient(t, e, ca, &good)
	if _, err := c.Put(callCtx(t), "/tls/a", "1"); err != nil {
		t.Fatalf("put with a client certificate: %v", err)
	}
	if resp, err := c.Get(callCtx(t), "/tls/a"); err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "1" {
		t.Fatalf("get with a client certificate: %v, %v", resp, err)
	}
	if _, err := c.Status(callCtx(t), "https://"+e.addr); err != nil {
		t.Fatalf("status with a client certificate: %v", err)
	}
	gw := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.pool, Certificates: []tls.Certificate{good}}}}
	resp, err := gw.Post("https://"+e.addr+"/v3/kv/range", "application/json", strings.NewReader(`{"key": "L3Rscy9h"}`))
	if err != nil {
		t.Fatalf("gateway with a client certificate: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"value":"MQ=="`) {
		t.Fatalf("gateway range with a client certificate: %d %s", resp.StatusCode, body)
	}

	for _, tc := range []struct {
		name string
		cert *tls.Certificate
	}{{"no client certificate", nil}, {"another CA's certificate", &stranger}} {
		// The handshake itself fails: the server refuses the connection.
		cfg := &tls.Config{RootCAs: ca.pool, NextProtos: []string{"h2"}}
		if tc.cert != nil {
			cfg.Certificates = []tls.Certificate{*tc.cert}
		}
		conn, err := tls.Dial("tcp", e.addr, cfg)
		if err == nil {
			_, err = conn.Read(make([]byte, 1)) // TLS 1.3: the server's verdict comes after the client's Finished
			conn.Close()
		}
		if err == nil || !strings.Contains(err.Error(), "tls:") {
			t.Errorf("%s: TLS handshake: %v, want a TLS error", tc.name, err)
		}
		if _, err := tlsClient(t, e, ca, tc.cert).Get(shortCtx(t), "/tls/a"); err == nil {
			t.Errorf("%s: get succeeded", tc.name)
		}
	}
	// A client that does not speak TLS at all gets nothing either.
	if _, err := newEtcdClient(t, clientv3.Config{Endpoints: []string{e.endpoint}}).Get(shortCtx(t), "/tls/a"); err == nil {
		t.Error("plain-text client: get succeeded")
	}
}

// Server TLS without client authentication takes a plain TLS client.
func TestTLSServerOnly(t *testing.T) {
	ca := newTestCA(t, "walwatch-ca")
	e := tlsEnv(t, ca, nil)
	c := tlsClient(t, e, ca, nil)
	if _, err := c.Put(callCtx(t), "/tls/b", "2"); err != nil {
		t.Fatalf("put over TLS: %v", err)
	}
	st, err := c.Status(callCtx(t), "https://"+e.addr)
	if err != nil || st.Version != DefaultEmulatedVersion {
		t.Fatalf("status over TLS: %v, %v", st, err)
	}
	gw := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.pool}}}
	resp, err := gw.Get("https://" + e.addr + "/version")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"etcdserver":"3.7.3"`) {
		t.Errorf("GET /version over TLS: %d %s", resp.StatusCode, body)
	}
	// A client that does not trust the server's CA refuses it.
	if _, err := tlsClient(t, e, newTestCA(t, "other"), nil).Get(shortCtx(t), "/tls/b"); err == nil {
		t.Error("a client trusting another CA: get succeeded")
	}
}
