// A JSON-RPC 1.0 client from Go's standard library, for rpc.test.ts:
// `go run ./test/go/client PORT` makes its calls on one connection to
// 127.0.0.1:PORT and prints one line for each.
package main

import (
	"fmt"
	"net/rpc/jsonrpc"
	"os"
)

type Args struct{ A, B int }

func main() {
	client, err := jsonrpc.Dial("tcp", "127.0.0.1:"+os.Args[1])
	if err != nil {
		panic(err)
	}
	var product int
	err = client.Call("Arith.Multiply", Args{6, 7}, &product)
	fmt.Println("multiply:", product, err)
	err = client.Call("Arith.Nope", Args{1, 2}, &product)
	fmt.Println("unknown method:", err)
	err = client.Call("Arith.Multiply", Args{3, 4}, &product)
	fmt.Println("after the error:", product, err)

	// Many calls at once on the same connection, matched by id.
	const n = 200
	products := make([]int, n)
	calls := make([]chan error, n)
	for i := range calls {
		call := client.Go("Arith.Multiply", Args{i, 2}, &products[i], nil)
		calls[i] = make(chan error, 1)
		go func(i int) { calls[i] <- (<-call.Done).Error }(i)
	}
	right := 0
	for i, done := range calls {
		if err := <-done; err == nil && products[i] == 2*i {
			right++
		}
	}
	fmt.Printf("concurrent: %d of %d right\n", right, n)
}
