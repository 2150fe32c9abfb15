package etcdapi

import (
	"bytes"
	"net"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// TestStaticFlowControlWindows checks, frame by frame, that the server
// offers a window as large as the largest request it takes, on each stream
// and twice that on the connection, and sends no ping of its own to measure
// the link: a gRPC server that estimates the bandwidth-delay product (the
// default, and etcd's) pings after a request's data, one more write and
// one more read a request for both sides.
func TestStaticFlowControlWindows(t *testing.T) {
	e := newEnv(t)
	conn, err := net.DialTimeout("tcp", e.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(conn, conn)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	// A unary MemberList: its headers, then an empty message as data.
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range [][2]string{
		{":method", "POST"}, {":scheme", "http"}, {":path", "/etcdserverpb.Cluster/MemberList"},
		{":authority", e.addr}, {"content-type", "application/grpc"}, {"te", "trailers"},
	} {
		if err := enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]}); err != nil {
			t.Fatal(err)
		}
	}
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
	empty := make([]byte, 5) // gRPC's message prefix: not compressed, length 0
	if err := fr.WriteData(1, true, empty); err != nil {
		t.Fatal(err)
	}

	want := uint32(DefaultMaxRequestBytes + grpcOverheadBytes)
	var streamWindow, connWindow uint32 = 0, 65535 // HTTP/2's initial connection window
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("read a frame before the call's end: %v", err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if v, ok := f.Value(http2.SettingInitialWindowSize); ok {
				streamWindow = v
			}
			if !f.IsAck() {
				if err := fr.WriteSettingsAck(); err != nil {
					t.Fatal(err)
				}
			}
		case *http2.WindowUpdateFrame:
			if f.StreamID == 0 {
				connWindow += f.Increment
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				t.Errorf("the server sent a ping after a request; with static windows it has none to measure")
			}
		case *http2.HeadersFrame:
			if f.StreamEnded() { // the trailers: the call is over
				if streamWindow != want {
					t.Errorf("stream window %d, want %d: the largest request without a window update", streamWindow, want)
				}
				if connWindow < 2*want {
					t.Errorf("connection window %d, want at least %d", connWindow, 2*want)
				}
				return
			}
		}
	}
}
