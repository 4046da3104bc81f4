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
/// worker's result, then pays the worker (less an optional protocol fee), or refunds the
/// client. After the job's deadline the client can always take back funds that were not
/// released, so nothing is stuck even if the control plane disappears.
/// @dev Every transition writes its state before any external call and emits one event.
/// A payment the receiver refuses is credited for `withdraw` instead of blocking the job.
contract ProoflineEscrow is AccessControl, ReentrancyGuardTransient, EIP712 {
    using SafeERC20 for IERC20;

    bytes32 public constant ROUTER_ROLE = keccak256("ROUTER_ROLE");
    bytes32 public constant VERIFIER_ROLE = keccak256("VERIFIER_ROLE");
    bytes32 public constant OPERATOR_ROLE = keccak256("OPERATOR_ROLE");
    bytes32 public constant ARBITER_ROLE = keccak256("ARBITER_ROLE");
    bytes32 public constant RESULT_TYPEHASH = keccak256("Result(bytes32 jobId,bytes32 resultHash)");
    address public constant NATIVE = address(0);
    uint16 public constant MAX_FEE_BPS = 1_000;

    enum State { None, Funded, Assigned, Verified, Disputed, Released, Refunded, Reclaimed, Resolved }

    /// @dev Three storage slots per job.
    struct Job {
        address client;
        uint48 deadline;
        State state;
        uint40 verifiedAt;
        address worker;
        uint96 amount;
        address token;
        uint32 disputeWindow;
        uint16 feeBps;
    }

    mapping(bytes32 jobId => Job) private _jobs;
    mapping(address token => bool) public allowedToken;
    mapping(address token => uint256) public feesAccrued;
    mapping(address token => mapping(address account => uint256)) public credits;
    address public treasury;
    uint16 public feeBps;
    uint32 public disputeWindow;

    event Funded(bytes32 indexed jobId, address indexed client, address token, uint256 amount, uint256 deadline);
    event Assigned(bytes32 indexed jobId, address indexed worker);
    event Verified(bytes32 indexed jobId, bytes32 resultHash, uint256 releasableAt);
    event Released(bytes32 indexed jobId, address indexed worker, bytes32 resultHash, uint256 paid, uint256 fee);
    event Refunded(bytes32 indexed jobId, address indexed client, uint256 amount);
    event Reclaimed(bytes32 indexed jobId, address indexed client, uint256 amount);
    event DisputeOpened(bytes32 indexed jobId, address indexed client);
    event DisputeResolved(bytes32 indexed jobId, uint256 workerShareBps, uint256 toWorker, uint256 toClient);
    event PaymentDeferred(address indexed token, address indexed account, uint256 amount);

    error AlreadyFunded(bytes32 jobId);
    error WrongState(bytes32 jobId, State state);
    error TokenNotAllowed(address token);
    error BadAmount();
    error BadDeadline();
    error BadWorker();
    error BadSignature(address signer, address worker);
    error NotClient(address caller);
    error DeadlineNotPassed(uint256 deadline);
    error DisputeWindowClosed(uint256 closedAt);
    error DisputeWindowOpen(uint256 opensAt);
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

    /// @notice Fund job `jobId` with `amount` of `token` (NATIVE: send the ETH along).
    /// @param deadline after which, without a release, the client may `reclaim`
    function fund(bytes32 jobId, address token, uint256 amount, uint256 deadline) external payable nonReentrant {
        Job storage job = _jobs[jobId];
        if (job.state != State.None) revert AlreadyFunded(jobId);
        if (!allowedToken[token]) revert TokenNotAllowed(token);
        if (amount == 0 || amount > type(uint96).max) revert BadAmount();
        if (token == NATIVE ? msg.value != amount : msg.value != 0) revert BadAmount();
        if (deadline <= block.timestamp || deadline > type(uint48).max) revert BadDeadline();
        job.client = msg.sender;
        job.deadline = uint48(deadline);
        job.state = State.Funded;
        job.amount = uint96(amount);
        job.token = token;
        job.disputeWindow = disputeWindow;
        job.feeBps = feeBps;
        emit Funded(jobId, msg.sender, token, amount, deadline);
        if (token != NATIVE) IERC20(token).safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @notice After the deadline, take back funds that were never released.
    function reclaim(bytes32 jobId) external nonReentrant {
        Job storage job = _jobs[jobId];
        if (msg.sender != job.client) revert NotClient(msg.sender);
        State state = job.state;
        if (state != State.Funded && state != State.Assigned && state != State.Disputed) {
            revert WrongState(jobId, state);
        }
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
        emit DisputeOpened(jobId, msg.sender);
    }

    // ----------------------------------------------------------------------- control plane

    /// @notice Record the worker the router chose; only that worker's signature can be paid.
    function assign(bytes32 jobId, address worker) external onlyRole(ROUTER_ROLE) {
        Job storage job = _jobs[jobId];
        if (job.state != State.Funded && job.state != State.Assigned) revert WrongState(jobId, job.state);
        if (worker == address(0)) revert BadWorker();
        job.worker = worker;
        job.state = State.Assigned;
        emit Assigned(jobId, worker);
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
        if (job.state != State.Funded && job.state != State.Assigned) revert WrongState(jobId, job.state);
        job.state = State.Refunded;
        uint256 amount = job.amount;
        emit Refunded(jobId, job.client, amount);
        _pay(job.token, job.client, amount);
    }

    /// @notice Settle a dispute: the worker gets `workerShareBps` of the amount (less the
    /// fee on that share), the client the rest.
    function resolveDispute(bytes32 jobId, uint256 workerShareBps) external onlyRole(ARBITER_ROLE) nonReentrant {
        Job storage job = _jobs[jobId];
        if (job.state != State.Disputed) revert WrongState(jobId, job.state);
        if (workerShareBps > 10_000) revert BadShare(workerShareBps);
        job.state = State.Resolved;
        uint256 share = (uint256(job.amount) * workerShareBps) / 10_000;
        uint256 fee = (share * job.feeBps) / 10_000;
        uint256 toClient = job.amount - share;
        feesAccrued[job.token] += fee;
        emit DisputeResolved(jobId, workerShareBps, share - fee, toClient);
        _pay(job.token, job.worker, share - fee);
        _pay(job.token, job.client, toClient);
    }

    // ------------------------------------------------------------------------------ admin

    function setFee(uint16 bps, address treasury_) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (bps > MAX_FEE_BPS) revert BadFee(bps);
        feeBps = bps;
        treasury = treasury_;
    }

    function setDisputeWindow(uint32 seconds_) external onlyRole(DEFAULT_ADMIN_ROLE) {
        disputeWindow = seconds_;
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

    /// @notice Collect payments that could not be delivered when they were made.
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

    function jobOf(bytes32 jobId) external view returns (Job memory) {
        return _jobs[jobId];
    }

    /// @notice The EIP-712 digest a worker signs for (jobId, resultHash).
    function resultDigest(bytes32 jobId, bytes32 resultHash) public view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(RESULT_TYPEHASH, jobId, resultHash)));
    }

    // --------------------------------------------------------------------------- internal

    function _release(bytes32 jobId, bytes32 resultHash, bytes calldata signature) private {
        Job storage job = _jobs[jobId];
        if (job.state != State.Assigned) revert WrongState(jobId, job.state);
        address signer = ECDSA.recover(resultDigest(jobId, resultHash), signature);
        if (signer != job.worker) revert BadSignature(signer, job.worker);
        if (job.disputeWindow == 0) {
            _payWorker(jobId, job, resultHash);
        } else {
            job.state = State.Verified;
            job.verifiedAt = uint40(block.timestamp);
            emit Verified(jobId, resultHash, block.timestamp + job.disputeWindow);
        }
    }

    function _payWorker(bytes32 jobId, Job storage job, bytes32 resultHash) private {
        job.state = State.Released;
        uint256 amount = job.amount;
        uint256 fee = (amount * job.feeBps) / 10_000;
        if (fee != 0) feesAccrued[job.token] += fee;
        address worker = job.worker;
        emit Released(jobId, worker, resultHash, amount - fee, fee);
        _pay(job.token, worker, amount - fee);
    }

    /// @dev Never lets a receiver block a transition: a refused ETH payment becomes a credit.
    function _pay(address token, address to, uint256 amount) private {
        if (amount == 0) return;
        if (token == NATIVE) {
            (bool ok,) = to.call{value: amount}("");
            if (!ok) {
                credits[NATIVE][to] += amount;
                emit PaymentDeferred(NATIVE, to, amount);
            }
        } else {
            IERC20(token).safeTransfer(to, amount);
        }
    }
}
