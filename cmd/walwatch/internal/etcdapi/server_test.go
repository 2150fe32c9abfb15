package etcdapi

import (
	"context"
	"reflect"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestMemberList(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Name = "cp-a" })
	resp, err := e.etcd.MemberList(callCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Members) != 1 {
		t.Fatalf("MemberList: %d members, want this one: %+v", len(resp.Members), resp.Members)
	}
	m, h := resp.Members[0], resp.Header
	if m.ID == 0 || m.ID != h.MemberId || m.Name != "cp-a" || len(m.PeerURLs) != 0 || m.IsLearner ||
		!reflect.DeepEqual(m.ClientURLs, []string{e.endpoint}) {
		t.Errorf("member %+v (header member %x), want this cp, started, with client URLs [%s] and no peer URLs", m, h.MemberId, e.endpoint)
	}
	// etcd's Cluster responses carry no revision.
	if h.ClusterId == 0 || h.RaftTerm < 1 || h.Revision != 0 {
		t.Errorf("header %+v: want the cluster ID, a term and no revision, as etcd's", h)
	}
	for name, call := range map[string]func() error{
		"MemberAdd": func() error { _, err := e.etcd.MemberAdd(callCtx(t), []string{"http://127.0.0.1:2380"}); return err },
		"MemberAddAsLearner": func() error {
			_, err := e.etcd.MemberAddAsLearner(callCtx(t), []string{"http://127.0.0.1:2380"})
			return err
		},
		"MemberRemove": func() error { _, err := e.etcd.MemberRemove(callCtx(t), m.ID); return err },
		"MemberUpdate": func() error {
			_, err := e.etcd.MemberUpdate(callCtx(t), m.ID, []string{"http://127.0.0.1:2380"})
			return err
		},
		"MemberPromote": func() error { _, err := e.etcd.MemberPromote(callCtx(t), m.ID); return err },
	} {
		checkUnimplemented(t, name, call(), "another walwatch cp")
	}
}

// checkUnimplemented fails t unless err is codes.Unimplemented with a
// message containing want.
func checkUnimplemented(t *testing.T, what string, err error, want string) {
	t.Helper()
	if s, _ := status.FromError(err); err == nil || s.Code() != codes.Unimplemented || !strings.Contains(s.Message(), want) {
		t.Errorf("%s: %v, want Unimplemented saying %q", what, err, want)
	}
}

// callAll calls every method of a generated gRPC client (unary, or a
// stream's first receive) with an empty request and returns the errors by
// method name.
func callAll(t *testing.T, client any) map[string]error {
	t.Helper()
	errs := map[string]error{}
	v := reflect.ValueOf(client)
	for i := range v.NumMethod() {
		name, m := v.Type().Method(i).Name, v.Method(i)
		args := []reflect.Value{reflect.ValueOf(callCtx(t))}
		if m.Type().NumIn() == 3 { // ctx, request, options
			args = append(args, reflect.New(m.Type().In(1).Elem()))
		}
		out := m.Call(args)
		if err, _ := out[len(out)-1].Interface().(error); err != nil {
			errs[name] = err
			continue
		}
		if s, ok := out[0].Interface().(grpc.ClientStream); ok {
			if err := s.CloseSend(); err != nil {
				errs[name] = err
				continue
			}
			recv := out[0].MethodByName("Recv").Call(nil)
			errs[name], _ = recv[1].Interface().(error)
			continue
		}
		errs[name] = nil
	}
	return errs
}

func TestAuthUnimplemented(t *testing.T) {
	e := newEnv(t)
	errs := callAll(t, pb.NewAuthClient(e.etcd.ActiveConnection()))
	if len(errs) != 17 {
		t.Errorf("called %d Auth methods, want 17: %v", len(errs), errs)
	}
	for name, err := range errs {
		checkUnimplemented(t, name, err, "TLS client certificates")
	}
	_, err := e.etcd.AuthStatus(callCtx(t))
	checkUnimplemented(t, "clientv3 AuthStatus", err, "TLS client certificates")
	_, err = e.etcd.UserAdd(callCtx(t), "root", "secret")
	checkUnimplemented(t, "clientv3 UserAdd", err, "TLS client certificates")
}

// A client configured with a user and password fails to connect, saying
// why, rather than talking to a server it believes authenticates it.
func TestAuthenticatingClientRefused(t *testing.T) {
	e := newEnv(t)
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{e.endpoint}, Username: "root", Password: "secret", DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err == nil {
		defer c.Close()
		_, err = c.Get(callCtx(t), "a")
	}
	if err == nil || !strings.Contains(err.Error(), "TLS client certificates") {
		t.Errorf("client with a password: %v, want the Auth service's Unimplemented", err)
	}
}

// gRPC metrics (per method and code, with latency histograms) and the watch
// gauges are on the registry the server was given.
func TestMetrics(t *testing.T) {
	e := newEnv(t)
	for range 3 {
		if _, err := e.etcd.Status(callCtx(t), e.endpoint); err != nil {
			t.Fatal(err)
		}
	}
	_, _ = e.etcd.AuthStatus(callCtx(t))
	families, err := e.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]*dto.MetricFamily{}
	for _, f := range families {
		byName[f.GetName()] = f
	}
	sample := func(family string, labels map[string]string) *dto.Metric {
		for _, m := range byName[family].GetMetric() {
			got := map[string]string{}
			for _, l := range m.GetLabel() {
				got[l.GetName()] = l.GetValue()
			}
			match := true
			for k, v := range labels {
				match = match && got[k] == v
			}
			if match {
				return m
			}
		}
		return nil
	}
	status := map[string]string{"grpc_service": "etcdserverpb.Maintenance", "grpc_method": "Status"}
	if m := sample("grpc_server_handled_total", map[string]string{"grpc_method": "Status", "grpc_code": "OK"}); m.GetCounter().GetValue() != 3 {
		t.Errorf("grpc_server_handled_total for Status OK: %v, want 3", m)
	}
	if m := sample("grpc_server_handled_total", map[string]string{"grpc_method": "AuthStatus", "grpc_code": "Unimplemented"}); m.GetCounter().GetValue() != 1 {
		t.Errorf("grpc_server_handled_total for AuthStatus Unimplemented: %v, want 1", m)
	}
	if m := sample("grpc_server_handling_seconds", status); m.GetHistogram().GetSampleCount() != 3 {
		t.Errorf("grpc_server_handling_seconds for Status: %v, want 3 samples", m)
	}
	// Every method is there from the start, at 0, as grpc-prometheus's
	// InitializeMetrics does.
	if m := sample("grpc_server_started_total", map[string]string{"grpc_method": "Watch"}); m == nil {
		t.Error("grpc_server_started_total has no Watch series")
	}
	for _, g := range []string{"walwatch_etcd_watch_streams", "walwatch_etcd_watchers"} {
		if byName[g].GetType() != dto.MetricType_GAUGE {
			t.Errorf("gauge %s missing: %v", g, byName[g])
		}
	}
}

// A stream open when the server stops ends with etcd's "server stopped"
// (Unavailable: clientv3 retries it) rather than holding the stop up.
func TestStopEndsStreams(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	w, err := pb.NewWatchClient(e.etcd.ActiveConnection()).Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{
		CreateRequest: &pb.WatchCreateRequest{Key: []byte("/stop")}}}); err != nil {
		t.Fatal(err)
	}
	if resp, err := w.Recv(); err != nil || !resp.Created {
		t.Fatalf("watch create: %v, %v", resp, err)
	}
	e.stop()
	for {
		_, err := w.Recv()
		if err == nil {
			continue
		}
		if s, _ := status.FromError(err); s.Code() != codes.Unavailable || s.Message() != "etcdserver: server stopped" {
			t.Errorf("watch stream at stop: %v, want etcd's server stopped (Unavailable)", err)
		}
		return
	}
}
