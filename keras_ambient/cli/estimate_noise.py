"""`keras-ambient estimate-noise`: the noise level of a dataset."""

import json

from keras_ambient.cli.data import _load_reference, estimate_noise, load_data


def cmd_estimate_noise(args):
    y, stored_sigma, kind = load_data(args.data, args.resolution, args.grayscale, args.limit)
    true_sigma = None
    if kind == "digits":
        from keras_ambient.data.noise import add_noise

        true_sigma = float(args.sigma_n)
        y = add_noise(y, true_sigma, seed=args.data_seed) if true_sigma > 0 else y
    # The default is reference-free; the built-in digits' clean test split calibrates
    # only with --method calibrated (a --reference given explicitly is used by 'auto').
    reference, ref_name = (None, None) if args.method in ("pca", "mad") else _load_reference(args, kind)
    if args.method == "auto" and args.reference is None:
        reference, ref_name = None, None
    estimate, method = estimate_noise(y, reference, args.method)
    result = {"data": args.data, "num_samples": int(len(y)), "sigma_n_estimate": estimate, "method": method}
    if ref_name and method == "calibrated":
        result["reference"] = ref_name
    if true_sigma is not None:
        result["sigma_n_true"] = true_sigma
    if stored_sigma is not None:
        result["sigma_n_stored"] = stored_sigma.tolist()
    if args.json:
        print(json.dumps(result))
    else:
        line = f"Estimated noise level: sigma_n = {estimate:.4f} (method: {method}"
        line += f", calibrated on {ref_name})" if "reference" in result else ")"
        if true_sigma is not None:
            line += f"; the digits were noised at {true_sigma:g}"
        print(line)
    return 0
