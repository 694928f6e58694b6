-- Only paid (and then shipped) orders reach the CRM; a cancelled order leaves it.
--   lookup:     the status label comes from the CRM's own crm_order_status table
--   conversion: order month as 'YYYY-MM' text, currency upper-cased
INSERT INTO crm_order (order_ref, customer_no, amount, currency, status, order_month, ordered_at)
SELECT CONCAT('SO-', CAST(o.order_no AS CHAR)),
       CONCAT('C', LPAD(CAST(o.customer_id AS CHAR), 8, '0')),
       o.amount,
       UPPER(o.currency),
       s.label,
       DATE_FORMAT(o.ordered_at, '%Y-%m'),
       o.ordered_at
FROM orders AS o
JOIN crm_order_status AS s ON s.code = o.status_code
WHERE o.status_code IN (1, 2);
