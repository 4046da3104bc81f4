// Compile contracts/*.sol (and contracts/test/*.sol) with solcjs into
// chalicelib/settlement/artifacts/ (packaged with the control plane).
// `node contracts/build.js --check` compiles and compares instead of writing (exit 1 on drift).
const fs = require("fs");
const path = require("path");
const solc = require("solc");

const root = path.resolve(__dirname, "..");
const sources = {};
for (const dir of ["contracts", "contracts/test"]) {
  for (const file of fs.readdirSync(path.join(root, dir)).sort()) {
    if (file.endsWith(".sol")) {
      sources[`${dir}/${file}`] = { content: fs.readFileSync(path.join(root, dir, file), "utf8") };
    }
  }
}
const input = {
  language: "Solidity",
  sources,
  settings: {
    optimizer: { enabled: true, runs: 10000 },
    evmVersion: "cancun",
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object"] } },
  },
};
function findImports(file) {
  const candidate = path.join(root, "node_modules", file);
  return fs.existsSync(candidate) ? { contents: fs.readFileSync(candidate, "utf8") } : { error: "not found" };
}
const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
const errors = (output.errors || []).filter((e) => e.severity === "error");
const ours = (e) => !e.sourceLocation || e.sourceLocation.file.startsWith("contracts/");
for (const e of (output.errors || []).filter(ours)) console.error(e.formattedMessage);
if (errors.length) process.exit(1);

const outDir = path.join(root, "chalicelib", "settlement", "artifacts");
let drift = false;
for (const [source, contracts] of Object.entries(output.contracts)) {
  if (!source.startsWith("contracts/")) continue;
  for (const [name, c] of Object.entries(contracts)) {
    const artifact = JSON.stringify({
      contractName: name, sourceName: source, compiler: `solc ${solc.version()}`,
      settings: input.settings, abi: c.abi, bytecode: "0x" + c.evm.bytecode.object,
    }, null, 2) + "\n";
    const file = path.join(outDir, `${name}.json`);
    if (process.argv.includes("--check")) {
      const current = fs.existsSync(file) ? fs.readFileSync(file, "utf8") : "";
      if (current !== artifact) { console.error(`${file} differs from a fresh compile`); drift = true; }
    } else {
      fs.mkdirSync(outDir, { recursive: true });
      fs.writeFileSync(file, artifact);
      console.log(`wrote ${path.relative(root, file)}`);
    }
  }
}
process.exit(drift ? 1 : 0);
