// finmesh's contract as a Node.js caller meets it: @grpc/grpc-js with @grpc/proto-loader loading protos/
// alone (the vendored google/rpc and grpc health protos included, nothing else on the include path), and
// the refusals' details decoded with the Protobuf-ES code generated from the same protos (buf.gen.ts.yaml).
//
// Env: FINMESH_PAYMENTS_TARGET (host:port), FINMESH_ALICE_ID/FINMESH_ALICE_TOKEN and FINMESH_BOB_ID/
// FINMESH_BOB_TOKEN (two customers' bearer tokens). Prints one JSON object of what it saw on stdout and
// exits 0, or prints the first broken expectation on stderr and exits 1.
// Run it through tests/integration/test_node_client.py, which starts payments and mints the tokens.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import { createRegistry, fromBinary } from "@bufbuild/protobuf";
import { anyUnpack } from "@bufbuild/protobuf/wkt";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

import { ErrorReason, ErrorReasonSchema } from "./gen/finmesh/common/v1/errors_pb.js";
import { BadRequestSchema, ErrorInfoSchema } from "./gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "./gen/google/rpc/status_pb.js";

const PROTOS = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "protos");
const DEADLINE_MS = 10_000;
// The domain of every finmesh ErrorInfo, and the prefix the wire reason drops from the enum value name.
const DOMAIN = "finmesh.io";
const REASON_PREFIX = "ERROR_REASON_";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};

function load(file) {
  // includeDirs holds protos/ only: the contract must compile from it alone.
  const definition = protoLoader.loadSync(file, {
    includeDirs: [PROTOS],
    keepCase: true,
    longs: String, // int64 money as decimal strings: no float ever carries money
    enums: String,
    defaults: true,
  });
  return grpc.loadPackageDefinition(definition);
}

const target = env("FINMESH_PAYMENTS_TARGET");
const credentials = grpc.credentials.createInsecure();
const health = new (load("grpc/health/v1/health.proto").grpc.health.v1.Health)(target, credentials);
const payments = new (load("finmesh/payments/v1/payments_service.proto").finmesh.payments.v1.PaymentsService)(
  target,
  credentials,
);

function call(client, method, request, token) {
  const metadata = new grpc.Metadata();
  if (token) metadata.set("authorization", `Bearer ${token}`);
  return new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline: Date.now() + DEADLINE_MS }, (error, reply) =>
      error ? reject(error) : resolve(reply),
    );
  });
}

async function refusal(promise) {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new assert.AssertionError({ message: "the call succeeded; a refusal was expected" });
}

// What a refusal says: its status code's name, and from grpc-status-details-bin (a google.rpc.Status) the
// ErrorInfo reason mapped to its ErrorReason enum value, and the BadRequest field violations, if any.
const registry = createRegistry(ErrorInfoSchema, BadRequestSchema);
function decode(error) {
  const [raw] = error.metadata.get("grpc-status-details-bin");
  assert.ok(raw, `no grpc-status-details-bin on ${grpc.status[error.code]}: ${error.details}`);
  const status = fromBinary(StatusSchema, raw);
  assert.equal(status.code, error.code, "google.rpc.Status.code is the call's status code");
  const details = status.details.map((any) => anyUnpack(any, registry));
  const info = details.find((d) => d?.$typeName === "google.rpc.ErrorInfo");
  assert.ok(info, "every finmesh refusal carries a google.rpc.ErrorInfo");
  assert.equal(info.domain, DOMAIN);
  // The wire reason is the enum value's name without its prefix: INSUFFICIENT_FUNDS is
  // ERROR_REASON_INSUFFICIENT_FUNDS (protos/finmesh/common/v1/errors.proto, docs/CLIENTS.md).
  const value = ErrorReasonSchema.values.find((v) => v.name === REASON_PREFIX + info.reason);
  assert.ok(value, `reason ${info.reason} is no value of finmesh.common.v1.ErrorReason`);
  // Protobuf-ES drops the same prefix from the TypeScript enum's members: ErrorReason[reason] is the value.
  assert.equal(ErrorReason[info.reason], value.number);
  const badRequest = details.find((d) => d?.$typeName === "google.rpc.BadRequest");
  return {
    code: grpc.status[error.code],
    reason: info.reason,
    reason_enum: value.name,
    reason_number: value.number,
    violations: (badRequest?.fieldViolations ?? []).map((v) => v.field),
  };
}

const cny = (minor) => ({ currency_code: "CNY", minor_units: String(minor) });
const key = () => randomUUID();
const alice = { id: env("FINMESH_ALICE_ID"), token: env("FINMESH_ALICE_TOKEN") };
const bob = { id: env("FINMESH_BOB_ID"), token: env("FINMESH_BOB_TOKEN") };
const seen = {};

// 1. Health: the standard grpc.health.v1 service, for the server and for the payments service by name.
seen.health = {
  server: (await call(health, "Check", { service: "" })).status,
  payments: (await call(health, "Check", { service: "finmesh.payments.v1.PaymentsService" })).status,
};
assert.deepEqual(seen.health, { server: "SERVING", payments: "SERVING" });

// 2. No token: UNAUTHENTICATED, reason TOKEN_MISSING.
const wallet = (owner) => ({
  idempotency_key: key(),
  owner_id: owner.id,
  kind: "ACCOUNT_KIND_CUSTOMER_WALLET",
  currency_code: "CNY",
});
seen.unauthenticated = decode(await refusal(call(payments, "OpenAccount", wallet(alice))));
assert.equal(seen.unauthenticated.code, "UNAUTHENTICATED");
assert.equal(seen.unauthenticated.reason_number, ErrorReason.TOKEN_MISSING);

// 3. With tokens: two wallets, a top-up, a payment; the payment's idempotency key replayed returns it again.
const aliceWallet = (await call(payments, "OpenAccount", wallet(alice), alice.token)).account.account_id;
const bobWallet = (await call(payments, "OpenAccount", wallet(bob), bob.token)).account.account_id;
await call(
  payments,
  "TopUp",
  { idempotency_key: key(), account_id: aliceWallet, channel: "test_bank", amount: cny(10_000) },
  alice.token,
);
const pay = (minor, idempotency_key = key()) =>
  call(
    payments,
    "CreatePayment",
    {
      idempotency_key,
      payer_account_id: aliceWallet,
      payee_account_id: bobWallet,
      amount: cny(minor),
      capture_mode: "CAPTURE_MODE_AUTOMATIC",
    },
    alice.token,
  );
const paymentKey = key();
const payment = (await pay(2_500, paymentKey)).payment;
const replayed = (await pay(2_500, paymentKey)).payment;
assert.equal(replayed.payment_id, payment.payment_id, "the same idempotency key returns the same payment");
const balance = async (account, owner) =>
  (await call(payments, "GetAccount", { account_id: account }, owner.token)).account.balance.available_minor_units;
seen.payment = {
  status: payment.status,
  amount: payment.amount.minor_units,
  replayed_same_payment: replayed.payment_id === payment.payment_id,
  alice_available: await balance(aliceWallet, alice),
  bob_available: await balance(bobWallet, bob),
};

// 4. Validation: a negative amount, refused with the field named in a BadRequest.
seen.validation = decode(
  await refusal(
    call(
      payments,
      "CreatePayment",
      { idempotency_key: key(), payer_account_id: aliceWallet, payee_account_id: bobWallet, amount: cny(-1) },
      alice.token,
    ),
  ),
);
assert.equal(seen.validation.code, "INVALID_ARGUMENT");
assert.equal(seen.validation.reason_number, ErrorReason.VALIDATION_FAILED);
assert.ok(seen.validation.violations.includes("amount.minor_units"), "a validation refusal names its fields");

// 5. A business refusal: paying more than the wallet holds.
seen.refusal = decode(await refusal(pay(1_000_000)));
assert.equal(seen.refusal.reason_number, ErrorReason.INSUFFICIENT_FUNDS);

health.close();
payments.close();
process.stdout.write(`${JSON.stringify(seen)}\n`);
