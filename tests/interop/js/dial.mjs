// Dials a micro-os peer with js-libp2p over TCP + noise + yamux, waits for identify,
// pings it, and prints one JSON line: {"peer", "agent", "protocols", "rtt_ms"}.
// Node 20 lacks Promise.withResolvers, which current js-libp2p uses
Promise.withResolvers ??= function () {
  let resolve, reject
  const promise = new Promise((res, rej) => { resolve = res; reject = rej })
  return { promise, resolve, reject }
}
const { createLibp2p } = await import('libp2p')
const { tcp } = await import('@libp2p/tcp')
const { noise } = await import('@chainsafe/libp2p-noise')
const { yamux } = await import('@chainsafe/libp2p-yamux')
const { identify } = await import('@libp2p/identify')
const { ping } = await import('@libp2p/ping')
const { multiaddr } = await import('@multiformats/multiaddr')

const target = multiaddr(process.argv[2])
const node = await createLibp2p({
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: { identify: identify(), ping: ping() }
})
const identified = new Promise((resolve) => {
  node.addEventListener('peer:identify', (evt) => resolve(evt.detail))
})
const conn = await node.dial(target)
const info = await Promise.race([
  identified,
  new Promise((_, reject) => setTimeout(() => reject(new Error('identify timed out')), 10000))
])
const rtt = await node.services.ping.ping(target)
console.log(JSON.stringify({
  peer: conn.remotePeer.toString(),
  agent: info.agentVersion,
  protocols: info.protocols,
  rtt_ms: rtt
}))
await node.stop()
