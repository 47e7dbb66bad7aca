"""``fastzsl predict``: class and P(unseen) of images or feature rows in a .npy file."""
from __future__ import annotations


def add_parser(subparsers):
    p = subparsers.add_parser("predict", help="classify images or features from a .npy file",
                              description="Predict classes of images (n, H, W[, C]) or feature "
                                          "rows (n, n_features) in a .npy.")
    p.add_argument("run", help="folder written by 'fastzsl train'")
    p.add_argument("input", help=".npy of uint8 images (n, H, W) or features (n, n_features)")
    p.add_argument("output", help="CSV to write: row, predicted_class, probability (of that "
                                  "class under the calibrated Eq. 2 mixture), p_unseen")
    p.set_defaults(handler=run)


def run(args) -> int:
    from fastzsl.app.experiment import predict_file

    n = predict_file(args.run, args.input, args.output)
    print(f"{n} predictions written to {args.output}")
    return 0
