// A JSON-RPC 1.0 server from Go's standard library, for rpc.test.ts:
// `go run ./test/go/server` listens on 127.0.0.1 (a free port), prints
// "listening PORT", and serves Arith.Multiply and Arith.Divide.
package main

import (
	"errors"
	"fmt"
	"net"
	"net/rpc"
	"net/rpc/jsonrpc"
)

type Args struct{ A, B int }

type Arith struct{}

func (Arith) Multiply(args Args, reply *int) error {
	*reply = args.A * args.B
	return nil
}

func (Arith) Divide(args Args, reply *int) error {
	if args.B == 0 {
		return errors.New("divide by zero")
	}
	*reply = args.A / args.B
	return nil
}

func main() {
	if err := rpc.Register(Arith{}); err != nil {
		panic(err)
	}
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	fmt.Println("listening", listener.Addr().(*net.TCPAddr).Port)
	for {
		conn, err := listener.Accept()
		if err != nil {
			panic(err)
		}
		go jsonrpc.ServeConn(conn)
	}
}
