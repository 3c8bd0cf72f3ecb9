// A Modbus line of several units, served by modbus-serial: an implementation independent of
// pymodbus, used where pymodbus's server does not behave like a real line. Units that are not
// configured (or are made silent) never answer, as on an RS-485 line; an unmapped address gets
// exception 02.
//
//   node modbus_line.js CONFIG.json
//
// CONFIG: {"tcp": {"host": "127.0.0.1", "port": 15020}} or {"serial": {"path": "/dev/pts/7",
// "baudRate": 9600}}, plus {"units": {"1": {"holding": {"0": 17}, "input": {}, "coil": {"3": true},
// "discrete": {}}}, "delay_ms": 0}. Prints "READY" on stdout once listening. Commands on stdin,
// one JSON object per line: {"silent": [3]} (units that stop answering), {"set": {"unit": 1,
// "table": "holding", "address": 0, "value": 5}}.
"use strict";

const fs = require("fs");
const readline = require("readline");
const ModbusRTU = require("modbus-serial");

const config = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const units = config.units || {};
const delayMs = config.delay_ms || 0;
let silent = new Set((config.silent || []).map(Number));

function answer(table, address, unitID, callback) {
  const unit = units[String(unitID)];
  if (!unit || silent.has(unitID)) {
    return; // a real RTU device with another address stays silent
  }
  const value = (unit[table] || {})[String(address)];
  const reply = () =>
    value === undefined ? callback({ modbusErrorCode: 0x02 }) : callback(null, value);
  if (delayMs) {
    setTimeout(reply, delayMs);
  } else {
    reply();
  }
}

function store(table, address, value, unitID, callback) {
  const unit = units[String(unitID)];
  if (!unit || silent.has(unitID)) {
    return;
  }
  const cells = unit[table] || {};
  if (cells[String(address)] === undefined) {
    return callback({ modbusErrorCode: 0x02 });
  }
  cells[String(address)] = value;
  callback(null);
}

const vector = {
  getHoldingRegister: (address, unitID, callback) => answer("holding", address, unitID, callback),
  getInputRegister: (address, unitID, callback) => answer("input", address, unitID, callback),
  getCoil: (address, unitID, callback) => answer("coil", address, unitID, callback),
  getDiscreteInput: (address, unitID, callback) => answer("discrete", address, unitID, callback),
  setRegister: (address, value, unitID, callback) =>
    store("holding", address, value, unitID, callback),
  setCoil: (address, value, unitID, callback) => store("coil", address, value, unitID, callback),
};

let server;
if (config.tcp) {
  server = new ModbusRTU.ServerTCP(vector, {
    host: config.tcp.host || "127.0.0.1",
    port: config.tcp.port,
    unitID: 255,
  });
  server.on("initialized", () => console.log("READY"));
  server.on("serverError", (error) => {
    console.error("server error:", error.message);
    process.exit(2);
  });
} else {
  server = new ModbusRTU.ServerSerial(vector, {
    path: config.serial.path,
    baudRate: config.serial.baudRate || 9600,
    unitID: 255,
    interval: config.serial.interval_ms || 10,
  });
  server.on("initialized", () => console.log("READY"));
}
server.on("socketError", () => {}); // a client closing its connection is not an error here

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const command = JSON.parse(line);
  if (command.silent) {
    silent = new Set(command.silent.map(Number));
  }
  if (command.set) {
    const { unit, table, address, value } = command.set;
    units[String(unit)][table][String(address)] = value;
  }
  console.log("OK");
});

function shutdown() {
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 500);
}
process.on("SIGTERM", shutdown);
process.on("SIGINT", shutdown);
