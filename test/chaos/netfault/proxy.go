// Package netfault is a TCP proxy for tests that break a network path on
// purpose: it forwards connections to a target and can cut every connection
// at once, or black-hole them (nothing forwarded, nothing closed) until
// restored, as a partition that drops packets would.
package netfault

import (
	"fmt"
	"net"
	"sync"
)

// Proxy forwards each connection accepted on its address to a target.
// Its methods are safe for concurrent use.
type Proxy struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	conns  map[*pair]struct{}
	open   chan struct{} // closed while traffic flows; a fresh one while black-holed
	closed bool
	wg     sync.WaitGroup
}

// pair is one proxied connection: the client's side and the target's.
type pair struct {
	client net.Conn
	done   chan struct{} // closed when the pair is closed

	mu     sync.Mutex
	server net.Conn // nil until connected onward
	closed bool
}

func (p *pair) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	p.closed = true
	close(p.done)
	p.client.Close()
	if p.server != nil {
		p.server.Close()
	}
}

// connected records the onward connection; false if the pair was closed
// meanwhile (and s with it).
func (p *pair) connected(s net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		s.Close()
		return false
	}
	p.server = s
	return true
}

// Listen starts a proxy on a free loopback port that forwards to target
// (host:port).
func Listen(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("netfault: listen: %w", err)
	}
	open := make(chan struct{})
	close(open)
	p := &Proxy{ln: ln, target: target, conns: make(map[*pair]struct{}), open: open}
	p.wg.Go(p.accept)
	return p, nil
}

// Addr is the proxy's address (host:port).
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Cut closes every connection now, as a reset would. New connections are
// accepted as before.
func (p *Proxy) Cut() {
	p.mu.Lock()
	conns := make([]*pair, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	for _, c := range conns {
		c.close()
	}
}

// Blackhole stops forwarding: bytes in flight are held, new connections are
// accepted but not connected onward, nothing is closed. Restore ends it.
func (p *Proxy) Blackhole() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.open:
		p.open = make(chan struct{})
	default: // already black-holed
	}
}

// Restore lets traffic flow again after Blackhole.
func (p *Proxy) Restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.open:
	default:
		close(p.open)
	}
}

// Close stops accepting, closes every connection and waits for the
// proxy's goroutines.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	err := p.ln.Close()
	p.Restore()
	p.Cut()
	p.wg.Wait()
	return err
}

// gate returns a channel that is closed while traffic may flow.
func (p *Proxy) gate() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.open
}

func (p *Proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		pr := &pair{client: c, done: make(chan struct{})}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			c.Close()
			return
		}
		p.conns[pr] = struct{}{}
		p.mu.Unlock()
		p.wg.Go(func() { p.serve(pr) })
	}
}

// serve connects pr onward (once traffic may flow) and copies both ways
// until either side ends or the pair is cut.
func (p *Proxy) serve(pr *pair) {
	defer func() {
		pr.close()
		p.mu.Lock()
		delete(p.conns, pr)
		p.mu.Unlock()
	}()
	select {
	case <-p.gate():
	case <-pr.done:
		return
	}
	s, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	if !pr.connected(s) { // cut while dialling
		return
	}
	var wg sync.WaitGroup
	wg.Go(func() { p.copy(pr, s, pr.client) })
	wg.Go(func() { p.copy(pr, pr.client, s) })
	wg.Wait()
}

// copy forwards src to dst, holding each chunk while black-holed. Either
// direction ending ends the pair.
func (p *Proxy) copy(pr *pair, dst, src net.Conn) {
	defer pr.close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			select {
			case <-p.gate():
			case <-pr.done:
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil { // EOF or a cut: the pair ends either way
			return
		}
	}
}
