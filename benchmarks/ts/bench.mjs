// Engine-overhead benchmark for the TypeScript Flowcraft (the published npm package).
//
// benchmarks/engine.py copies this file into a scratch directory where `flowcraft` is
// installed and runs it with node; it prints one JSON document on stdout. The scenarios
// mirror the Python ones in benchmarks/engine.py: trivial async nodes, so what is measured
// is the engine's own cost per node.
//
//   node bench.mjs [--quick] [--repeat N] [--chain N] [--fan N] [--runs N]
// (no forced garbage collection: the Python side does not force one either)

import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import { createFlow, FlowRuntime } from 'flowcraft'

function parseArgs(argv) {
	const opts = { quick: false, repeat: 3, chain: 1000, fan: 1000, runs: 2000 }
	for (let i = 0; i < argv.length; i++) {
		const a = argv[i]
		if (a === '--quick') opts.quick = true
		else if (a === '--repeat') opts.repeat = Number(argv[++i])
		else if (a === '--chain') opts.chain = Number(argv[++i])
		else if (a === '--fan') opts.fan = Number(argv[++i])
		else if (a === '--runs') opts.runs = Number(argv[++i])
		else throw new Error(`unknown argument ${a}`)
	}
	return opts
}

// The only work a node does: add one to its input (0 for a start node).
async function inc({ input }) {
	return { output: (typeof input === 'number' ? input : 0) + 1 }
}

async function one() {
	return { output: 1 }
}

// The join only marks that it ran; upstream hands a join the last delivered value, not all of
// them, so the check after the run counts the workers' outputs in the final context instead.
async function done() {
	return { output: 'done' }
}

function chainFlow(id, n) {
	const flow = createFlow(id)
	for (let i = 0; i < n; i++) flow.node(`n${i}`, inc)
	for (let i = 1; i < n; i++) flow.edge(`n${i - 1}`, `n${i}`)
	return { blueprint: flow.toBlueprint(), registry: flow.getFunctionRegistry(), last: `n${n - 1}` }
}

function fanFlow(id, n) {
	const flow = createFlow(id)
	flow.node('src', one)
	for (let i = 0; i < n; i++) flow.node(`w${i}`, inc)
	flow.node('join', done, { config: { joinStrategy: 'all' } })
	for (let i = 0; i < n; i++) {
		flow.edge('src', `w${i}`)
		flow.edge(`w${i}`, 'join')
	}
	return { blueprint: flow.toBlueprint(), registry: flow.getFunctionRegistry(), last: 'join' }
}

function check(result, last, expected, what) {
	const got = result.context[`_outputs.${last}`]
	if (result.status !== 'completed' || got !== expected) {
		throw new Error(`${what}: status ${result.status}, output ${JSON.stringify(got)}, expected ${expected}`)
	}
}

function checkFan(result, n) {
	check(result, 'join', 'done', 'fan')
	for (let i = 0; i < n; i++) {
		if (result.context[`_outputs.w${i}`] !== 2) throw new Error(`fan: worker w${i} has no output`)
	}
}

// The version of the installed package (its package.json is not in the package's exports).
function installedVersion() {
	const path = join(process.cwd(), 'node_modules', 'flowcraft', 'package.json')
	return JSON.parse(readFileSync(path, 'utf8')).version
}

// Best (minimum) wall time in seconds over `repeat` timed calls of `fn`, after one warm-up;
// `verify` checks the value of every call outside the timed section.
async function best(fn, verify, repeat) {
	verify(await fn())
	let min = Number.POSITIVE_INFINITY
	for (let r = 0; r < repeat; r++) {
		const t0 = performance.now()
		const value = await fn()
		const dt = (performance.now() - t0) / 1000
		verify(value)
		if (dt < min) min = dt
	}
	return min
}

async function main() {
	const opts = parseArgs(process.argv.slice(2))
	const runtime = new FlowRuntime()
	// Enough concurrency that the whole fan is started in one wave (the default is
	// min(hardwareConcurrency, 10), which would run the fan in waves of ten).
	const concurrency = Math.max(opts.fan + 2, 1024)
	const out = {
		engine: 'flowcraft (TypeScript, npm)',
		flowcraft_version: installedVersion(),
		node_version: process.version,
		concurrency,
		repeat: opts.repeat,
	}

	const run = (flow) => runtime.run(flow.blueprint, {}, { functionRegistry: flow.registry, concurrency })

	const chain = chainFlow('bench-chain', opts.chain)
	const chainSeconds = await best(
		() => run(chain),
		(r) => check(r, chain.last, opts.chain, 'chain'),
		opts.repeat,
	)
	out.chain_1000 = { nodes: opts.chain, seconds: chainSeconds, us_per_node: (chainSeconds * 1e6) / opts.chain }

	const fan = fanFlow('bench-fan', opts.fan)
	const fanSeconds = await best(
		() => run(fan),
		(r) => checkFan(r, opts.fan),
		opts.repeat,
	)
	const fanNodes = opts.fan + 2
	out.fan_1000 = { nodes: fanNodes, seconds: fanSeconds, us_per_node: (fanSeconds * 1e6) / fanNodes }

	const small = chainFlow('bench-small', 5)
	const smallSeconds = await best(
		async () => {
			const results = []
			for (let i = 0; i < opts.runs; i++) results.push(await run(small))
			return results
		},
		(rs) => {
			for (const r of rs) check(r, small.last, 5, 'small run')
		},
		opts.repeat,
	)
	out.small_runs_2000 = {
		runs: opts.runs,
		nodes_per_run: 5,
		seconds: smallSeconds,
		runs_per_s: opts.runs / smallSeconds,
		us_per_node: (smallSeconds * 1e6) / (opts.runs * 5),
	}

	process.stdout.write(`${JSON.stringify(out)}\n`)
}

main().catch((err) => {
	process.stderr.write(`${err?.stack ?? err}\n`)
	process.exit(1)
})
