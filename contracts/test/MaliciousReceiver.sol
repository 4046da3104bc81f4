// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

interface IEscrow {
    function fund(bytes32 jobId, address token, uint256 amount, uint256 duration, uint256 expiry, bytes calldata routerSignature)
        external
        payable;
    function release(bytes32 jobId, bytes32 resultHash, bytes calldata signature) external;
    function reclaim(bytes32 jobId) external;
    function withdraw(address token) external;
}

/// @notice A worker or client contract that tries to re-enter the escrow when paid.
contract MaliciousReceiver {
    IEscrow public immutable escrow;
    bytes32 public target;
    uint256 public attempts;
    bool public reentered;

    constructor(IEscrow escrow_) {
        escrow = escrow_;
    }

    function aim(bytes32 jobId) external {
        target = jobId;
    }

    function fundTarget(uint256 duration, uint256 expiry, bytes calldata quote) external payable {
        escrow.fund{value: msg.value}(target, address(0), msg.value, duration, expiry, quote);
    }

    function reclaimTarget() external {
        escrow.reclaim(target);
    }

    receive() external payable {
        attempts += 1;
        // Propagates the guard's revert, so the escrow sees a refused payment.
        escrow.reclaim(target);
        reentered = true;
    }
}
