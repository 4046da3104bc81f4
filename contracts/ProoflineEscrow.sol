// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

/// @title Proofline job escrow
/// @notice Holds a client's payment for one job until the control plane has verified the
/// worker's result, then credits the worker the price fixed at assignment (less an optional
/// protocol fee) and the client the change, each to `withdraw` whenever (one transaction for
/// any number of jobs); or refunds the client in full.
///
/// Who may do what:
/// - Only the client a router quote names can fund its job, with exactly the quoted token
///   and amount; the deadline is the quote's duration from the funding, never the client's
///   choice. So nobody can fund someone else's job, nor fund on other terms.
/// - The router assigns a funded job to a worker at a price within the amount, and may
///   re-assign it once (work redone elsewhere) before any result is released.
/// - The verifier releases against the assigned worker's own signature over the result.
/// - The client may reclaim only after the deadline and only while nothing was released:
///   never while the work is assigned. A dispute ends by the arbiter's decision within the
///   arbitration window, or else by the default rule: the verified result stands.
/// @dev Every transition writes its state before any external call and emits one event.
/// A payment the receiver refuses is credited for `withdraw` instead of blocking the job.
contract ProoflineEscrow is AccessControl, ReentrancyGuardTransient, EIP712 {
    using SafeERC20 for IERC20;

    bytes32 public constant ROUTER_ROLE = keccak256("ROUTER_ROLE");
    bytes32 public constant VERIFIER_ROLE = keccak256("VERIFIER_ROLE");
    bytes32 public constant OPERATOR_ROLE = keccak256("OPERATOR_ROLE");
    bytes32 public constant ARBITER_ROLE = keccak256("ARBITER_ROLE");
    bytes32 public constant RESULT_TYPEHASH = keccak256("Result(bytes32 jobId,bytes32 resultHash)");
    bytes32 public constant FUNDING_TYPEHASH = keccak256(
        "Funding(bytes32 jobId,address client,address token,uint256 amount,uint256 duration,uint256 expiry)"
    );
    address public constant NATIVE = address(0);
    uint16 public constant MAX_FEE_BPS = 1_000;
    uint8 public constant MAX_ASSIGNMENTS = 2; // the first, and at most one re-assignment

    enum State { None, Funded, Assigned, Verified, Disputed, Released, Refunded, Reclaimed, Resolved }

    /// @dev Four storage slots per job, laid out for the control plane's gas: `assign` writes
    /// only slot 1 (a job is assigned while it is Funded with assignments > 0: `jobOf` and
    /// the errors report that as Assigned), and a release reads slots 0 to 2. Slot 3 is read
    /// only by disputes. Timestamps fit until 2106; amounts up to 2^80 base units.
    struct Job {
        address client;
        uint32 deadline;
        uint32 verifiedAt;
        uint24 disputeWindow;
        State state;
        address worker;
        uint80 price;
        uint8 assignments;
        address token;
        uint80 amount;
        uint16 feeBps;
        uint32 arbitrationWindow;
        uint32 disputedAt;
    }

    mapping(bytes32 jobId => Job) private _jobs;
    mapping(address token => bool) public allowedToken;
    mapping(address token => uint256) public feesAccrued;
    mapping(address token => mapping(address account => uint256)) public credits;
    address public treasury;
    uint16 public feeBps;
    uint24 public disputeWindow;
    uint32 public arbitrationWindow = 3 days;

    event Funded(bytes32 indexed jobId, address indexed client, address token, uint256 amount, uint256 deadline);
    event Assigned(bytes32 indexed jobId, address indexed worker, uint256 price, uint256 assignment);
    event Verified(bytes32 indexed jobId, bytes32 resultHash, uint256 releasableAt);
    event Released(
        bytes32 indexed jobId, address indexed worker, bytes32 resultHash, uint256 paid, uint256 fee, uint256 change
    );
    event Refunded(bytes32 indexed jobId, address indexed client, uint256 amount);
    event Reclaimed(bytes32 indexed jobId, address indexed client, uint256 amount);
    event DisputeOpened(bytes32 indexed jobId, address indexed client, uint256 decideBy);
    event DisputeResolved(
        bytes32 indexed jobId, uint256 workerShareBps, uint256 toWorker, uint256 toClient, bool byDefault
    );
    event PaymentDeferred(address indexed token, address indexed account, uint256 amount);

    error AlreadyFunded(bytes32 jobId);
    error WrongState(bytes32 jobId, State state);
    error TokenNotAllowed(address token);
    error BadAmount();
    error BadDuration();
    error QuoteExpired(uint256 expiry);
    error BadQuote(address signer);
    error BadWorker();
    error PriceAboveAmount(uint256 price, uint256 amount);
    error ReassignedAlready(bytes32 jobId);
    error BadSignature(address signer, address worker);
    error NotClient(address caller);
    error DeadlineNotPassed(uint256 deadline);
    error DisputeWindowClosed(uint256 closedAt);
    error DisputeWindowOpen(uint256 opensAt);
    error ArbitrationClosed(uint256 closedAt);
    error ArbitrationOpen(uint256 closesAt);
    error BadShare(uint256 bps);
    error BadFee(uint256 bps);
    error LengthMismatch();
    error NothingToWithdraw();

    /// @param admin gets DEFAULT_ADMIN_ROLE (grants the other roles, sets fees and tokens)
    /// @param treasury_ receives protocol fees through `withdrawFees`
    constructor(address admin, address treasury_) EIP712("ProoflineEscrow", "1") {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        treasury = treasury_;
        allowedToken[NATIVE] = true;
    }

    // ----------------------------------------------------------------------------- client

    /// @notice Fund job `jobId` on the terms of a router quote: `amount` of `token` (NATIVE:
    /// send the ETH along), the deadline `duration` seconds from now. Only the client the
    /// quote names can send it, and only before the quote's `expiry`.
    function fund(
        bytes32 jobId,
        address token,
        uint256 amount,
        uint256 duration,
        uint256 expiry,
        bytes calldata routerSignature
    ) external payable nonReentrant {
        Job storage job = _jobs[jobId];
        if (job.state != State.None) revert AlreadyFunded(jobId);
        if (block.timestamp > expiry) revert QuoteExpired(expiry);
        address signer = ECDSA.recover(fundingDigest(jobId, msg.sender, token, amount, duration, expiry), routerSignature);
        if (!hasRole(ROUTER_ROLE, signer)) revert BadQuote(signer);
        if (!allowedToken[token]) revert TokenNotAllowed(token);
        if (amount == 0 || amount > type(uint80).max) revert BadAmount();
        if (token == NATIVE ? msg.value != amount : msg.value != 0) revert BadAmount();
        if (duration == 0 || duration > 365 days) revert BadDuration();
        uint256 deadline = block.timestamp + duration;
        job.client = msg.sender;
        job.deadline = uint32(deadline);
        job.state = State.Funded;
        job.amount = uint80(amount);
        job.price = uint80(amount); // the ceiling, until the router fixes the price
        job.token = token;
        job.disputeWindow = disputeWindow;
        job.arbitrationWindow = arbitrationWindow;
        job.feeBps = feeBps;
        emit Funded(jobId, msg.sender, token, amount, deadline);
        if (token != NATIVE) IERC20(token).safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @notice After the deadline, take back a job's funds if no result was released.
    function reclaim(bytes32 jobId) external nonReentrant {
        Job storage job = _jobs[jobId];
        if (msg.sender != job.client) revert NotClient(msg.sender);
        if (job.state != State.Funded) revert WrongState(jobId, _state(job));
        if (block.timestamp <= job.deadline) revert DeadlineNotPassed(job.deadline);
        job.state = State.Reclaimed;
        uint256 amount = job.amount;
        emit Reclaimed(jobId, msg.sender, amount);
        _pay(job.token, msg.sender, amount);
    }

    /// @notice Contest a verified result while its dispute window is open.
    function openDispute(bytes32 jobId) external {
        Job storage job = _jobs[jobId];
        if (msg.sender != job.client) revert NotClient(msg.sender);
        if (job.state != State.Verified) revert WrongState(jobId, job.state);
        uint256 closesAt = uint256(job.verifiedAt) + job.disputeWindow;
        if (block.timestamp >= closesAt) revert DisputeWindowClosed(closesAt);
        job.state = State.Disputed;
        job.disputedAt = uint32(block.timestamp);
        emit DisputeOpened(jobId, msg.sender, block.timestamp + job.arbitrationWindow);
    }

    // ----------------------------------------------------------------------- control plane

    /// @notice Record the worker the router chose and the price it will be paid; only that
    /// worker's signature can be paid. A job can be re-assigned once, before any release.
    function assign(bytes32 jobId, address worker, uint256 price) external onlyRole(ROUTER_ROLE) {
        _assign(jobId, worker, price);
    }

    /// @notice `assign` for many jobs in one transaction; any invalid item reverts all.
    function assignBatch(bytes32[] calldata jobIds, address[] calldata workers, uint256[] calldata prices)
        external
        onlyRole(ROUTER_ROLE)
    {
        if (jobIds.length != workers.length || jobIds.length != prices.length) revert LengthMismatch();
        for (uint256 i = 0; i < jobIds.length; ++i) {
            _assign(jobIds[i], workers[i], prices[i]);
        }
    }

    /// @notice Pay for a verified result: `workerSignature` must be the assigned worker's
    /// EIP-712 signature over (jobId, resultHash), so the chain records what was paid for and
    /// who claimed it. With a dispute window the payment waits for `finalize`.
    function release(bytes32 jobId, bytes32 resultHash, bytes calldata workerSignature)
        external
        onlyRole(VERIFIER_ROLE)
        nonReentrant
    {
        _release(jobId, resultHash, workerSignature);
    }

    /// @notice `release` for many jobs in one transaction; any invalid item reverts all.
    function releaseBatch(bytes32[] calldata jobIds, bytes32[] calldata resultHashes, bytes[] calldata signatures)
        external
        onlyRole(VERIFIER_ROLE)
        nonReentrant
    {
        if (jobIds.length != resultHashes.length || jobIds.length != signatures.length) revert LengthMismatch();
        for (uint256 i = 0; i < jobIds.length; ++i) {
            _release(jobIds[i], resultHashes[i], signatures[i]);
        }
    }

    /// @notice Pay a verified job whose dispute window passed without a dispute (anyone).
    function finalize(bytes32 jobId) external nonReentrant {
        Job storage job = _jobs[jobId];
        if (job.state != State.Verified) revert WrongState(jobId, job.state);
        uint256 opensAt = uint256(job.verifiedAt) + job.disputeWindow;
        if (block.timestamp < opensAt) revert DisputeWindowOpen(opensAt);
        _payWorker(jobId, job, bytes32(0));
    }

    /// @notice Return the funds of a failed or cancelled job to its client.
    function refund(bytes32 jobId) external onlyRole(OPERATOR_ROLE) nonReentrant {
        Job storage job = _jobs[jobId];
        if (job.state != State.Funded) revert WrongState(jobId, _state(job));
        job.state = State.Refunded;
        uint256 amount = job.amount;
        emit Refunded(jobId, job.client, amount);
        _pay(job.token, job.client, amount);
    }

    /// @notice Settle a dispute within the arbitration window: the worker gets
    /// `workerShareBps` of the price (less the fee on that share), the client the rest.
    function resolveDispute(bytes32 jobId, uint256 workerShareBps) external onlyRole(ARBITER_ROLE) nonReentrant {
        Job storage job = _jobs[jobId];
        if (job.state != State.Disputed) revert WrongState(jobId, job.state);
        uint256 closesAt = uint256(job.disputedAt) + job.arbitrationWindow;
        if (block.timestamp > closesAt) revert ArbitrationClosed(closesAt);
        if (workerShareBps > 10_000) revert BadShare(workerShareBps);
        _settleDispute(jobId, job, workerShareBps, false);
    }

    /// @notice A dispute the arbiter did not decide in time ends by the default rule: the
    /// verified result stands, so the worker is paid the price and the client gets the
    /// change (anyone may send it). Neither side can hold the funds by waiting.
    function settleUndecidedDispute(bytes32 jobId) external nonReentrant {
        Job storage job = _jobs[jobId];
        if (job.state != State.Disputed) revert WrongState(jobId, job.state);
        uint256 closesAt = uint256(job.disputedAt) + job.arbitrationWindow;
        if (block.timestamp <= closesAt) revert ArbitrationOpen(closesAt);
        _settleDispute(jobId, job, 10_000, true);
    }

    // ------------------------------------------------------------------------------ admin

    function setFee(uint16 bps, address treasury_) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (bps > MAX_FEE_BPS) revert BadFee(bps);
        feeBps = bps;
        treasury = treasury_;
    }

    /// @notice Windows for jobs funded from now on (a funded job keeps the ones it was funded under).
    function setDisputeWindows(uint24 disputeSeconds, uint32 arbitrationSeconds) external onlyRole(DEFAULT_ADMIN_ROLE) {
        disputeWindow = disputeSeconds;
        arbitrationWindow = arbitrationSeconds;
    }

    function setTokenAllowed(address token, bool allowed) external onlyRole(DEFAULT_ADMIN_ROLE) {
        allowedToken[token] = allowed;
    }

    function withdrawFees(address token) external nonReentrant {
        uint256 amount = feesAccrued[token];
        if (amount == 0) revert NothingToWithdraw();
        feesAccrued[token] = 0;
        _pay(token, treasury, amount);
    }

    /// @notice Collect what was credited to the caller in `token`: pay for work, change and
    /// dispute shares, and refunds its address refused.
    function withdraw(address token) external nonReentrant {
        uint256 amount = credits[token][msg.sender];
        if (amount == 0) revert NothingToWithdraw();
        credits[token][msg.sender] = 0;
        if (token == NATIVE) {
            (bool ok,) = msg.sender.call{value: amount}("");
            require(ok);
        } else {
            IERC20(token).safeTransfer(msg.sender, amount);
        }
    }

    // ------------------------------------------------------------------------------ views

    function jobOf(bytes32 jobId) external view returns (Job memory job) {
        job = _jobs[jobId];
        job.state = _state(_jobs[jobId]);
    }

    /// @notice The EIP-712 digest a worker signs for (jobId, resultHash).
    function resultDigest(bytes32 jobId, bytes32 resultHash) public view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(RESULT_TYPEHASH, jobId, resultHash)));
    }

    /// @notice The EIP-712 digest a router signs to quote a job's funding terms.
    function fundingDigest(
        bytes32 jobId,
        address client,
        address token,
        uint256 amount,
        uint256 duration,
        uint256 expiry
    ) public view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(FUNDING_TYPEHASH, jobId, client, token, amount, duration, expiry)));
    }

    // --------------------------------------------------------------------------- internal

    function _assign(bytes32 jobId, address worker, uint256 price) private {
        Job storage job = _jobs[jobId];
        if (job.state != State.Funded) revert WrongState(jobId, _state(job));
        if (job.assignments >= MAX_ASSIGNMENTS) revert ReassignedAlready(jobId);
        if (worker == address(0)) revert BadWorker();
        if (price > job.amount) revert PriceAboveAmount(price, job.amount);
        uint8 assignment = job.assignments + 1;
        job.worker = worker;
        job.price = uint80(price);
        job.assignments = assignment;
        emit Assigned(jobId, worker, price, assignment);
    }

    /// @dev The state as callers see it: a funded job with a worker is Assigned.
    function _state(Job storage job) private view returns (State) {
        State state = job.state;
        return state == State.Funded && job.assignments > 0 ? State.Assigned : state;
    }

    function _release(bytes32 jobId, bytes32 resultHash, bytes calldata signature) private {
        Job storage job = _jobs[jobId];
        if (job.state != State.Funded || job.assignments == 0) revert WrongState(jobId, _state(job));
        address signer = ECDSA.recover(resultDigest(jobId, resultHash), signature);
        if (signer != job.worker) revert BadSignature(signer, job.worker);
        if (job.disputeWindow == 0) {
            _payWorker(jobId, job, resultHash);
        } else {
            job.state = State.Verified;
            job.verifiedAt = uint32(block.timestamp);
            emit Verified(jobId, resultHash, block.timestamp + job.disputeWindow);
        }
    }

    /// @dev The price (less the fee) credited to the worker, the change to the client, at once.
    function _payWorker(bytes32 jobId, Job storage job, bytes32 resultHash) private {
        job.state = State.Released;
        uint256 price = job.price;
        address token = job.token;
        uint256 fee = (price * job.feeBps) / 10_000;
        if (fee != 0) feesAccrued[token] += fee;
        uint256 change = job.amount - price;
        address worker = job.worker;
        emit Released(jobId, worker, resultHash, price - fee, fee, change);
        _credit(token, worker, price - fee);
        _credit(token, job.client, change);
    }

    function _settleDispute(bytes32 jobId, Job storage job, uint256 workerShareBps, bool byDefault) private {
        job.state = State.Resolved;
        address token = job.token;
        uint256 share = (uint256(job.price) * workerShareBps) / 10_000;
        uint256 fee = (share * job.feeBps) / 10_000;
        uint256 toClient = job.amount - share;
        if (fee != 0) feesAccrued[token] += fee;
        emit DisputeResolved(jobId, workerShareBps, share - fee, toClient, byDefault);
        _credit(token, job.worker, share - fee);
        _credit(token, job.client, toClient);
    }

    /// @dev A payment to collect with `withdraw`: no external call, so nothing a receiver
    /// does can block a release, and a batch costs one storage write per new receiver.
    function _credit(address token, address to, uint256 amount) private {
        if (amount != 0) credits[token][to] += amount;
    }

    /// @dev Never lets a receiver block a transition: a refused payment (ETH to a contract
    /// that reverts, a token that blocks the address) becomes a credit to `withdraw` later.
    function _pay(address token, address to, uint256 amount) private {
        if (amount == 0) return;
        bool ok;
        if (token == NATIVE) {
            (ok,) = to.call{value: amount}("");
        } else {
            ok = IERC20(token).trySafeTransfer(to, amount);
        }
        if (!ok) {
            credits[token][to] += amount;
            emit PaymentDeferred(token, to, amount);
        }
    }
}
